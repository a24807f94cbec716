"""Raw HTTP/1.1 over a socket, for requests httpx will not send: bodies that stall, lie or never end."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterable


def exchange(port: int, head: bytes, chunks: Iterable[bytes] = (), timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `head` then `chunks` (in a thread, stopping when the answer comes) and return (status, answer
    head); status 0 when no answer came within `timeout`. The connection stays open after the last
    chunk, like a slow client's."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    answered = threading.Event()

    def pump() -> None:
        try:
            sock.sendall(head)
            for chunk in chunks:
                if answered.is_set():
                    return
                sock.sendall(chunk)
        except OSError:  # the server closed the connection after answering: expected
            pass

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except (TimeoutError, OSError):
        pass
    answered.set()
    sock.close()
    sender.join(10)
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def post_head(path: str, length: int | None, extra: dict[str, str] | None = None,
              content_type: str = "multipart/form-data; boundary=XyZ") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(pieces: Iterable[bytes]) -> Iterable[bytes]:
    """HTTP chunked framing of `pieces` (no final zero chunk unless the caller sends b"")."""
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
