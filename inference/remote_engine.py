"""What the node needs about remote engines (an inference server) without importing torch: their
errors, which the job runner catches, and the URL check, which the config runs."""
from __future__ import annotations

from urllib.parse import urlsplit

TRITON_SCHEMES = ("http", "grpc")


class EngineUnreachable(RuntimeError):
    """A remote engine (an inference server) cannot be reached now: connection refused, timed out,
    or its model not ready. Transient: the job waits and retries; it is not failed for this."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class EngineModelMismatch(ValueError):
    """The inference server runs other weights than the node's; the message names both hashes."""


def parse_triton_url(url: str) -> tuple[str, str]:
    """(scheme, "host:port") of a Triton URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in TRITON_SCHEMES:
        raise ValueError(f"triton_url {url!r}: the scheme must be http:// or grpc://")
    if not parts.hostname:
        raise ValueError(f"triton_url {url!r}: no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"triton_url {url!r}: the port is not a number 1-65535") from None
    if port is None:
        raise ValueError(f"triton_url {url!r}: give the port (Triton's defaults: HTTP 8000, gRPC 8001)")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"triton_url {url!r}: only scheme://host:port, no path")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"
