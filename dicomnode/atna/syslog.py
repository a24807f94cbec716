"""Syslog transport for audit messages: RFC 5424 messages, octet-counted over TCP or TLS (RFC 5425,
RFC 6587 3.4.1), or one per UDP datagram (RFC 5426), as IHE ITI-20 (Record Audit Event) asks."""
from __future__ import annotations

import select
import socket
import ssl
from datetime import datetime, timezone
from pathlib import Path

APP_NAME = "dicomnode"
MSGID = "IHE+RFC-3881"  # ITI TF-2 3.20.4.1.2: the MSGID of an audit message, DICOM or RFC 3881 schema
FACILITY = 10  # security/authorization (ITI-20: PRI 85 = facility 10, severity 5)
NOTICE, WARNING = 5, 4
UDP_MAX = 65507  # the largest IPv4 UDP payload


class SyslogError(OSError):
    """The repository could not be reached or dropped the connection; the message says which and why."""


def _field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the nil value '-'."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def frame(xml: bytes, when: datetime, host_name: str, process_id: int, severity: int = NOTICE) -> bytes:
    """One RFC 5424 message: HEADER, no STRUCTURED-DATA ('-'), the XML as MSG (UTF-8, no BOM:
    ITI CP-477)."""
    stamp = when.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = (f"<{FACILITY * 8 + severity}>1 {stamp} {_field(host_name, 255)} {APP_NAME} "
              f"{_field(str(process_id), 128)} {MSGID} - ")
    return header.encode("ascii") + xml


class SyslogSender:
    """A connection to the audit repository, opened on first use and again after a failure."""

    def __init__(self, host: str, port: int, transport: str, timeout_s: float, ca_file: Path | None = None,
                 cert_file: Path | None = None, key_file: Path | None = None) -> None:
        self.host, self.port, self.transport, self.timeout_s = host, port, transport, timeout_s
        self._tls: ssl.SSLContext | None = None
        if transport == "tls":
            self._tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert_file is not None and key_file is not None:
                self._tls.load_cert_chain(str(cert_file), str(key_file))
        self._sock: socket.socket | None = None

    @property
    def target(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"

    def _connect(self) -> socket.socket:
        if self.transport == "udp":
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect((self.host, self.port))
            return sock
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        if self._tls is None:
            return raw
        try:
            return self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _peer_closed(self, sock: socket.socket) -> bool:
        """A repository never writes on the syslog channel: a readable socket means it closed (or
        broke) the connection, and a frame written now would vanish in the kernel's buffer."""
        if self.transport == "udp":
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def send(self, messages: list[bytes]) -> None:
        """Write every message and return only when all went out (TCP/TLS: written to the socket;
        UDP: handed to the network). Raises SyslogError; the caller keeps the messages queued."""
        try:
            if self._sock is not None and self._peer_closed(self._sock):
                self.close()
            if self._sock is None:
                self._sock = self._connect()
            for message in messages:
                if self.transport == "udp":
                    self._sock.send(message[:UDP_MAX])  # RFC 5426 3.2: a receiver may truncate anyway
                else:
                    self._sock.sendall(str(len(message)).encode("ascii") + b" " + message)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise SyslogError(f"audit repository {self.target}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            try:
                if isinstance(self._sock, ssl.SSLSocket):
                    self._sock.settimeout(1.0)
                    self._sock.unwrap()  # close_notify: the repository sees an orderly end, not an error
            except (OSError, ValueError):
                pass
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
