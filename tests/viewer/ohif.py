"""The real OHIF v3 viewer for tests, a real peer rather than a mock.

`ohif_dist()` finds (or fetches with tests/viewer/fetch_ohif.sh) the prebuilt `dist/` of npm
`@ohif/app`, cached outside the repository. `OhifServer` serves it on 127.0.0.1 with our own
app-config.js (one DICOMweb data source on the same origin), falls back to index.html for the
single-page routes, and proxies /dicom-web and /wado to Orthanc, forwarding the Host header so the
DICOMweb plugin builds URLs that come back through this server.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

OHIF_VERSION = os.environ.get("OHIF_VERSION", "3.13.2")
FETCH_SCRIPT = Path(__file__).with_name("fetch_ohif.sh")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PROXIED_PREFIXES = ("/dicom-web", "/wado")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade"}

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/json", ".map")


class OhifUnavailable(RuntimeError):
    """The OHIF dist could not be found or fetched; the message says why (for a pytest skip)."""


def default_dist_dir() -> Path:
    """$OHIF_DIST, else ~/.cache/dicomnode-ohif/<version> (what fetch_ohif.sh uses)."""
    if os.environ.get("OHIF_DIST"):
        return Path(os.environ["OHIF_DIST"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dicomnode-ohif" / OHIF_VERSION


def ohif_dist(fetch: bool = True, timeout: float = 300.0) -> Path:
    """The OHIF dist directory; fetched with npm (fetch_ohif.sh) when missing and `fetch` is true."""
    dist = default_dist_dir()
    if (dist / "index.html").is_file():
        return dist
    if not fetch:
        raise OhifUnavailable(f"OHIF dist not found at {dist} (run: bash {FETCH_SCRIPT})")
    if shutil.which("npm") is None:
        raise OhifUnavailable(f"OHIF dist not at {dist} and npm is not installed to fetch @ohif/app@{OHIF_VERSION}")
    try:
        proc = subprocess.run(["bash", str(FETCH_SCRIPT), str(dist)], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, OHIF_VERSION=OHIF_VERSION))
    except subprocess.TimeoutExpired:
        raise OhifUnavailable(f"fetching @ohif/app@{OHIF_VERSION} with npm took over {timeout:g} s") from None
    if proc.returncode != 0 or not (dist / "index.html").is_file():
        raise OhifUnavailable(
            f"could not fetch @ohif/app@{OHIF_VERSION} with npm (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    return dist


def app_config_js(origin: str) -> str:
    """window.config for OHIF: one DICOMweb data source on this origin, WADO-RS rendering, no tour extras."""
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": {
                    "friendlyName": "Orthanc (test)",
                    "name": "orthanc",
                    "wadoUriRoot": f"{origin}/wado",
                    "qidoRoot": f"{origin}/dicom-web",
                    "wadoRoot": f"{origin}/dicom-web",
                    "qidoSupportsIncludeField": False,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


class OhifServer:
    """Threaded HTTP server for the OHIF dist on 127.0.0.1 (port 0 = free port), proxying to Orthanc.

    `orthanc_url`: e.g. OrthancProcess.base_url ("http://127.0.0.1:8042").
    """

    def __init__(self, dist: str | Path, orthanc_url: str, port: int = 0) -> None:
        self.dist = Path(dist).resolve()
        target = urlsplit(orthanc_url)
        self.orthanc_host = target.hostname or "127.0.0.1"
        self.orthanc_port = target.port or 80
        self._requested_port = port
        self.httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for debugging
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self.httpd is not None, "server not started"
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def viewer_url(self, study_instance_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def start(self) -> OhifServer:
        server = self
        handler = type("OhifHandler", (_Handler,), {"server_ref": server})
        self.httpd = _QuietServer(("127.0.0.1", self._requested_port), handler)
        self.httpd.daemon_threads = True
        self.config_js = app_config_js(self.url).encode()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> OhifServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # the browser drops connections (page closed, prefetch cancelled): not an error worth a traceback
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_ref: OhifServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr logging
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(head=False)

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._send(204, b"", "text/plain")

    def _dispatch(self, head: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if any(path == p or path.startswith(p + "/") for p in PROXIED_PREFIXES):
                self._proxy()
            elif path == "/app-config.js":
                self._send(200, self.server_ref.config_js, "text/javascript", head=head, cache=False)
            else:
                self._static(path, head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: bytes, content_type: str, head: bool = False, cache: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=3600" if cache else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server_ref._record(self.command, self.path, status)

    def _static(self, path: str, head: bool) -> None:
        dist = self.server_ref.dist
        candidate = (dist / unquote(path).lstrip("/")).resolve()
        inside = candidate == dist or dist in candidate.parents
        if not inside or not candidate.is_file():
            # single-page app: unknown routes (/viewer, /) are index.html; missing assets 404
            last = path.rsplit("/", 1)[-1]
            if "." in last and not last.endswith(".html"):
                self._send(404, b"not found", "text/plain", head=head)
                return
            candidate = dist / "index.html"
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        self._send(200, candidate.read_bytes(), content_type, head=head, cache=candidate.name != "index.html")

    def _proxy(self) -> None:
        ref = self.server_ref
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        # the DICOMweb plugin builds BulkDataURI/RetrieveURL from Host: keep ours so they come back here
        headers["Host"] = self.headers.get("Host") or f"127.0.0.1:{ref.port}"
        headers.pop("Accept-Encoding", None)
        conn = http.client.HTTPConnection(ref.orthanc_host, ref.orthanc_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            ref._record(self.command, self.path, resp.status)
        except OSError as err:
            self._send(502, f"proxy error: {err}".encode(), "text/plain")
        finally:
            conn.close()
