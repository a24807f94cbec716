"""Triton Inference Server engine: the forward pass runs on a Triton server (KServe v2 protocol,
through `tritonclient`, HTTP or gRPC); everything else of the pipeline stays in the node.

The server's model must carry the node's weights: the SHA-256 and version that
`dicomnode model export-triton` wrote into its config's parameters are checked against the node's
weights before the first request (and again after the server was unreachable: it may have been
redeployed). Connection refused, a timeout or a model that is not ready raise EngineUnreachable,
which the node's job runner turns into "wait and retry", not a failed job.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from inference.remote_engine import EngineModelMismatch, EngineUnreachable, parse_triton_url
from inference.engines.base import Engine, EngineUnavailable, NetworkIO

log = logging.getLogger(__name__)

# the parameters `dicomnode model export-triton` writes (inference.export_triton)
PARAM_SHA = "weights_sha256"
PARAM_VERSION = "weights_version"
# server answers that mean "not now" rather than "wrong": the model is loading, unloading or gone
_NOT_READY = ("unknown model", "not ready", "unavailable", "no available versions", "is not found")


@dataclass(frozen=True)
class TritonOptions:
    url: str  # http://host:port or grpc://host:port
    timeout_s: float = 300.0  # one request (a whole-volume detector pass on a busy CPU server is slow)
    connect_timeout_s: float = 5.0
    model_prefix: str = "dicomnode"  # models are <prefix>-detector and <prefix>-classifier


def _transient_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the server cannot be reached: socket errors, gevent's timeout (HTTP client)."""
    types: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import gevent

        types.append(gevent.Timeout)
    except ImportError:  # pragma: no cover - only the gRPC client installed
        pass
    return tuple(types)


class TritonEngine(Engine):
    def __init__(self, options: TritonOptions, io: NetworkIO, model_name: str, weights_sha256: str,
                 weights_version: str, max_batch: int = 1) -> None:
        self.scheme, self.address = parse_triton_url(options.url)
        try:
            if self.scheme == "http":
                import tritonclient.http  # noqa: F401
            else:
                import tritonclient.grpc  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable(
                f"triton engine: the tritonclient package is not installed (pip install 'dicomnode[triton]'): {exc}"
            ) from exc
        self.options = options
        self.io = io
        self.model_name = model_name
        self.weights_sha256 = weights_sha256
        self.weights_version = weights_version
        self.max_batch = max_batch
        self.name = f"triton-{self.scheme}"
        self._local = threading.local()  # one client per thread: tritonclient clients are not thread-safe
        self._verified = False
        self._transient = _transient_types()
        try:
            self.verify()
        except EngineUnreachable as exc:  # the node may start before the server: check at the first request
            log.warning("%s", exc)

    # -- the server ---------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.scheme == "http":
                import tritonclient.http as httpclient

                client = httpclient.InferenceServerClient(
                    self.address, connection_timeout=self.options.connect_timeout_s,
                    network_timeout=self.options.timeout_s)
            else:
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(self.address)
            self._local.client = client
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # a broken connection may fail to close; it is dropped either way
                pass

    def _unreachable(self, what: str, exc: BaseException) -> EngineUnreachable:
        self._verified = False  # the server may come back with other weights: check again
        self._drop_client()
        detail = str(exc) or type(exc).__name__
        return EngineUnreachable(f"Triton at {self.options.url} unreachable ({what} {self.model_name}): {detail}",
                                 url=self.options.url)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args) on the server; a transport failure or not-ready model becomes EngineUnreachable."""
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except self._transient as exc:
            raise self._unreachable(what, exc) from exc
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            text = str(exc.message() or "").lower()
            if status in ("", "502", "503", "504", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED") \
                    or any(s in text for s in _NOT_READY):
                raise self._unreachable(what, exc) from exc
            raise RuntimeError(f"Triton at {self.options.url} refused {what} {self.model_name}: {exc}") from exc

    def server_identity(self) -> dict[str, str]:
        """The weights SHA-256 and version the server's model config carries (empty where absent)."""
        client = self._client()
        if self.scheme == "http":
            config = self._call("reading the config of", client.get_model_config, self.model_name)
        else:
            config = self._call("reading the config of", client.get_model_config, self.model_name,
                                as_json=True, client_timeout=self.options.timeout_s)["config"]
        params = config.get("parameters", {}) or {}
        return {key: str((params.get(key) or {}).get("string_value", "")) for key in (PARAM_SHA, PARAM_VERSION)}

    def verify(self) -> None:
        """Refuse to run on a server whose model has other weights than this node's."""
        client = self._client()
        kwargs = {} if self.scheme == "http" else {"client_timeout": self.options.timeout_s}
        if not self._call("checking", client.is_model_ready, self.model_name, **kwargs):
            raise self._unreachable("checking", RuntimeError("model not ready"))
        found = self.server_identity()
        if found[PARAM_SHA] != self.weights_sha256:
            raise EngineModelMismatch(
                f"Triton at {self.options.url} serves {self.model_name} with weights sha256 "
                f"{found[PARAM_SHA] or '(none: the model config has no weights_sha256 parameter)'} "
                f"(version {found[PARAM_VERSION] or 'unknown'}), but this node's weights are sha256 "
                f"{self.weights_sha256} (version {self.weights_version}); refusing to run: export the node's "
                f"weights with `dicomnode model export-triton` and load them on the server")
        if found[PARAM_VERSION] != self.weights_version:
            raise EngineModelMismatch(
                f"Triton at {self.options.url} serves {self.model_name} labelled version {found[PARAM_VERSION]!r}, "
                f"this node's weights are version {self.weights_version!r} (both sha256 {self.weights_sha256}); "
                f"refusing to run")
        self._verified = True

    # -- inference ----------------------------------------------------------------------------
    def ensure_ready(self) -> None:
        if not self._verified:  # after an unreachable server: one readiness + identity check
            self.verify()

    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        if not self._verified:
            self.verify()
        client = self._client()
        if self.scheme == "http":
            import tritonclient.http as httpclient

            tensors = []
            for name, array in zip(self.io.input_names, inputs):
                t = httpclient.InferInput(name, list(array.shape), "FP32")
                t.set_data_from_numpy(array, binary_data=True)
                tensors.append(t)
            wanted = [httpclient.InferRequestedOutput(self.io.output_name, binary_data=True)]
            result = self._call("running", client.infer, self.model_name, tensors, outputs=wanted)
        else:
            import tritonclient.grpc as grpcclient

            gtensors = []
            for name, array in zip(self.io.input_names, inputs):
                g = grpcclient.InferInput(name, list(array.shape), "FP32")
                g.set_data_from_numpy(array)
                gtensors.append(g)
            result = self._call("running", client.infer, self.model_name, gtensors,
                                outputs=[grpcclient.InferRequestedOutput(self.io.output_name)],
                                client_timeout=self.options.timeout_s)
        out = result.as_numpy(self.io.output_name)
        if out is None:
            raise RuntimeError(f"Triton at {self.options.url}: {self.model_name} returned no {self.io.output_name!r}")
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._drop_client()
