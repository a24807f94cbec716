"""Runs the console with uvicorn in a background thread of the node process."""
from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from dicomnode.node import Node
from dicomnode.process.pipelines import MODEL_PIPELINES
from dicomnode.startup import StartupError
from dicomnode.web.app import create_app

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.settings.web
        self.app = create_app(node)
        self.port: int = self.settings.port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def _bind(self) -> socket.socket:
        """Bind here rather than in uvicorn so port 0 gives us the real port before start returns."""
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.host, self.settings.port))
        except OSError as exc:
            sock.close()
            raise StartupError(f"web console cannot listen on {self.settings.host}:{self.settings.port}: "
                               f"{exc.strerror} (set web.port, or web.enabled = false)") from None
        sock.listen(128)
        sock.set_inheritable(True)
        return sock

    def start(self) -> None:
        self._socket = self._bind()
        self.port = self._socket.getsockname()[1]
        # a generous keep-alive: when inference starves this thread of the GIL, a short idle timer can
        # fire late and reset a connection the client is already reusing
        cert, key = self.settings.tls_cert_file, self.settings.tls_key_file  # both or neither (config checks)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, timeout_keep_alive=30, server_header=False,
                                ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="web-console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise StartupError(f"web console did not start on {self.settings.host}:{self.port}")
        if not self.app.state.auth.required:
            log.info("web console on %s://%s:%s (loopback, no login)", self.scheme, self.settings.host, self.port)
        elif not (self.app.state.auth.has_users() or self.app.state.auth.tokens):
            log.warning("web console on %s:%s requires a login but no web.users or web.api_tokens are set",
                        self.settings.host, self.port)
        self._start_warmup()

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert_file is not None else "http"

    def _start_warmup(self) -> None:
        """Load the model of every route that needs it now, so /health is ready before the first series."""
        self.node.runner.warm_up(sorted({r.pipeline for r in self.node.settings.routes if r.pipeline in MODEL_PIPELINES}))

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
