"""DICOMweb out: deliveries to a `type = "dicomweb"` destination go by STOW-RS (PS3.18 10.5).

The sender (dicomnode.deliver.sender) hands over the due deliveries of one destination; they go in
multipart/related requests of at most MAX_INSTANCES_PER_REQUEST instances, streamed from the files
(with a Content-Length, so memory stays flat), and each delivery's outcome is read from the
response's Referenced SOP Sequence (stored) and Failed SOP Sequence (failed, with its Failure
Reason). What the answer does not name failed; a refused connection or an HTTP error fails the
whole request. The sender then retries, backs off and dead-letters as for C-STORE.

The optional Authorization header value comes from an environment variable or a file, read at each
send; it never appears in a message, log line or audit row.
"""
from __future__ import annotations

import json
import os
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from dicomnode.config import Destination

MAX_INSTANCES_PER_REQUEST = 100  # one request per this many deliveries: a large series is several requests
READ_CHUNK = 2**20
READ_TIMEOUT_S = 300.0  # for the server's answer to one request (it stores up to 100 instances first)
STORED_SEQ, FAILED_SEQ = "00081199", "00081198"
SOP_INSTANCE_UID, FAILURE_REASON = "00081155", "00081197"


class DicomwebError(Exception):
    """Sending is impossible before any request (no auth header value): every delivery fails with it."""


@dataclass(frozen=True)
class Item:
    """One delivery to send: its row id, SOP Instance UID and file (or why the file cannot be read)."""

    delivery_id: int
    sop_instance_uid: str
    path: Path


def stow_url(dest: Destination) -> str:
    assert dest.url is not None  # the config requires a url for type = "dicomweb"
    return f"{dest.url}/studies"


def auth_header(dest: Destination) -> str | None:
    """The Authorization header value, from auth_header_env or auth_header_file (None without either).
    Errors name the variable or file, never a value."""
    if dest.auth_header_env is not None:
        value = os.environ.get(dest.auth_header_env, "").strip()
        if not value:
            raise DicomwebError(f"environment variable {dest.auth_header_env} (auth_header_env) is not set or empty")
        return _checked(value, f"environment variable {dest.auth_header_env}")
    if dest.auth_header_file is not None:
        try:
            lines = dest.auth_header_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DicomwebError(f"cannot read auth_header_file {dest.auth_header_file}: "
                                f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise DicomwebError(f"auth_header_file {dest.auth_header_file} is empty")
        return _checked(value, f"auth_header_file {dest.auth_header_file}")
    return None


def _checked(value: str, source: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or not value.isascii():
        raise DicomwebError(f"the Authorization value in {source} holds control or non-ASCII characters")
    return value


def _body(boundary: bytes, paths: list[Path]) -> tuple[int, Iterator[bytes]]:
    """(length, chunks) of a multipart/related body with one application/dicom part per file."""
    head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
    tail = b"--" + boundary + b"--\r\n"
    length = sum(len(head) + p.stat().st_size + 2 for p in paths) + len(tail)

    def chunks() -> Iterator[bytes]:
        for path in paths:
            yield head
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield tail
    return length, chunks()


def _outcomes(status: int, text: str, uids: list[str]) -> dict[str, str | None]:
    """uid -> None (stored) or why, from a 200/202/409 Store Instances Response (PS3.18 Annex I)."""
    try:
        answer = json.loads(text) if text.strip() else {}
        if isinstance(answer, list):  # some servers wrap the data set in a JSON array
            answer = answer[0] if answer else {}
        stored = {i[SOP_INSTANCE_UID]["Value"][0] for i in answer.get(STORED_SEQ, {}).get("Value", [])
                  if i.get(SOP_INSTANCE_UID, {}).get("Value")}
        failed = {i[SOP_INSTANCE_UID]["Value"][0]: (i.get(FAILURE_REASON, {}).get("Value") or [None])[0]
                  for i in answer.get(FAILED_SEQ, {}).get("Value", []) if i.get(SOP_INSTANCE_UID, {}).get("Value")}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        if status == 200:  # 200: the server stored every instance (PS3.18 10.5.3), whatever the body says
            return {uid: None for uid in uids}
        return {uid: f"HTTP {status} with an unreadable STOW-RS response" for uid in uids}
    result: dict[str, str | None] = {}
    for uid in uids:
        if uid in stored:
            result[uid] = None
        elif uid in failed:
            reason = failed[uid]
            code = f"0x{reason:04X}" if isinstance(reason, int) else "(none given)"
            result[uid] = f"STOW-RS HTTP {status}: instance refused, failure reason {code}"
        elif status == 200 and not stored and not failed:
            result[uid] = None  # a 200 without the module: every instance stored
        else:
            result[uid] = f"STOW-RS HTTP {status}: the response does not name this instance"
    return result


def _client(timeout: float, ca_file: Path | None) -> httpx.Client:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    # connecting is bounded by sender.connect_timeout_s; storing a batch may take the server longer
    return httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S, connect=timeout), verify=verify,
                        follow_redirects=False, trust_env=False)


def _post(client: httpx.Client, url: str, items: list[Item], auth: str | None) -> dict[int, str | None]:
    boundary = uuid.uuid4().hex.encode()
    length, chunks = _body(boundary, [i.path for i in items])
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
               "Accept": "application/dicom+json", "Content-Length": str(length)}
    if auth is not None:
        headers["Authorization"] = auth
    try:
        response = client.post(url, content=chunks, headers=headers)
    except (httpx.HTTPError, OSError) as exc:  # refused, reset, timed out, TLS, a file gone: the whole request failed
        return {i.delivery_id: f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}"[:500] for i in items}
    if response.status_code not in (200, 202, 409):
        why = f"STOW-RS to {url} answered HTTP {response.status_code}: {response.text[:200].strip()}"
        return {i.delivery_id: why for i in items}
    by_uid = _outcomes(response.status_code, response.text, [i.sop_instance_uid for i in items])
    return {i.delivery_id: by_uid[i.sop_instance_uid] for i in items}


def send(dest: Destination, items: list[Item], timeout: float, ca_file: Path | None = None) -> dict[int, str | None]:
    """STOW-RS `items` to `dest`: delivery id -> None (stored by the server) or why not."""
    try:
        auth = auth_header(dest)
    except DicomwebError as exc:
        return {i.delivery_id: str(exc) for i in items}
    outcome: dict[int, str | None] = {}
    readable: list[Item] = []
    for item in items:
        if item.path.is_file():
            readable.append(item)
        else:
            outcome[item.delivery_id] = f"cannot send: {item.path.name} is not in the outbox or spool"
    url = stow_url(dest)
    try:
        client = _client(timeout, ca_file)
    except (OSError, ValueError) as exc:  # an unreadable tls.ca_file (ssl.SSLError is an OSError)
        outcome.update({i.delivery_id: f"cannot set up HTTPS with tls.ca_file: {exc}" for i in readable})
        return outcome
    with client:
        for start in range(0, len(readable), MAX_INSTANCES_PER_REQUEST):
            outcome.update(_post(client, url, readable[start:start + MAX_INSTANCES_PER_REQUEST], auth))
    return outcome
