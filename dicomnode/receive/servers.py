"""The DICOM acceptors: pynetdicom's server made safe against connection floods, alone or on the node's
listening socket shared by its receiver processes; and the TLS context they wrap connections in."""
from __future__ import annotations

import gc
import socket
import ssl
import threading
import time
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.receive.balance import ConnectionLoads, wait_for_turn
from dicomnode.receive.negotiation import ContextList

GC_INTERVAL_S = 30.0
LISTEN_BACKLOG = 512  # the kernel caps it at net.core.somaxconn


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's acceptor with three fixes for connection floods:

    - listen backlog LISTEN_BACKLOG instead of socketserver's 5: a burst overflowed it and the
      kernel dropped SYNs, which peers retry only after 1 s, 3 s, 7 s;
    - the TLS handshake runs in the connection's own thread (on its first read) instead of in the
      accept loop, where one silent client blocked every later connection indefinitely;
    - supported contexts copied cheaply per connection (ContextList).
    """

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = ContextList(self.contexts)
        self._collected = time.monotonic()

    def service_actions(self) -> None:
        """pynetdicom runs a full gc.collect() at every 60th turn of the accept loop (dead
        associations' reference cycles); a turn comes at least every poll interval, so with a short
        one that was every few seconds, under load a tenth of a receiver's CPU: at most every GC_INTERVAL_S."""
        now = time.monotonic()
        if now - self._collected >= GC_INTERVAL_S:
            gc.collect()
            self._collected = now

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        if listening is None:  # closed by server_close(): fail as accept() on a closed socket does
            raise OSError("the listening socket is closed")
        client, address = listening.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class SharedSocketServer(GuardedServer):
    """GuardedServer on the node's listening socket, which all its receiver processes inherit: one
    accept queue for all, and a receiver serving more connections than another lets that one
    accept first (dicomnode.receive.balance), so associations spread evenly over the processes.

    The shared socket is never shut down here (that would stop every receiver listening), only
    this process's descriptor closed; it is non-blocking, so a receiver that loses the race for a
    connection goes back to waiting (socketserver drops the OSError of get_request)."""

    def __init__(self, *args: Any, listen_fd: int, loads: ConnectionLoads, **kwargs: Any) -> None:
        self._listen_fd = listen_fd
        self.loads = loads
        self._in_flight = 0  # accepted, association thread not started yet
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver made: the node's is used instead
        self.socket = socket.socket(fileno=self._listen_fd)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        self.loads.publish(0)  # the node already listens on it; this receiver now takes connections

    def connections(self) -> int:
        """Connections this process serves now (accepted ones whose association has not started count too)."""
        return self._in_flight + len(self.active_associations)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        if listening is None:
            raise OSError("the listening socket is closed")
        if not wait_for_turn(listening, self.loads, self.connections()):
            raise BlockingIOError("the connection went to a less loaded receiver")
        client, address = super().get_request()  # BlockingIOError: another receiver took it first
        client.setblocking(True)
        with self._count_lock:
            self._in_flight += 1
        self.loads.publish(self.connections())
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:  # the association thread, when there is one, is running and counted by now
            with self._count_lock:
                self._in_flight -= 1

    def service_actions(self) -> None:
        super().service_actions()
        self.loads.publish(self.connections())  # ended associations, at every turn of the accept loop

    def server_close(self) -> None:
        if self.socket is not None:
            self.socket.close()


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    tls = settings.tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file:
        context.load_verify_locations(str(tls.ca_file))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context
