"""Receiving an upload over HTTP: after authentication, within limits, into a directory we own.

The routes take no body parameters, so FastAPI reads nothing before the user is known; the
multipart body is then parsed here as it streams: the declared length and the streamed length are
held to `web.max_upload_mb` (dicomnode.web.guard), part headers and part counts are bounded, a
session's CSRF token must arrive before the first file byte is written, and file parts go to
numbered files in a fresh folder under <data_dir>/web-upload that is removed when the request ends.
"""
from __future__ import annotations

import shutil
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from dicomnode.web.auth import CSRF_FIELD, CSRF_HEADER, Principal, check_csrf, client_host, verify_csrf
from dicomnode.web.guard import BodyTooLarge
from dicomnode.web.upload import (
    UploadLimits,
    UploadRejected,
    UploadResult,
    ingest_uploads,
    inside,
    new_upload_dir,
    record_rejection,
)

if TYPE_CHECKING:
    from dicomnode.node import Node

MAX_PART_HEADER_BYTES = 16 * 1024  # all header lines of one part together
MAX_FIELDS = 20  # the upload form has one field (csrf_token); room for API clients' extras


class UploadParser(MultiPartParser):
    """Starlette's parser with bounded part headers, file parts spooled to `folder`, and a hook that
    runs before the first file part (the CSRF check)."""

    def __init__(self, headers: Headers, stream: AsyncGenerator[bytes, None], folder: Path, max_files: int,
                 before_files: Callable[[list[tuple[str, str | UploadFile]]], None]) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=MAX_FIELDS, max_part_size=64 * 1024)
        self.folder = folder
        self.before_files = before_files
        self._header_bytes = 0
        self._file_count = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._header_bytes = 0

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise MultiPartException(f"part headers larger than {MAX_PART_HEADER_BYTES >> 10} KB")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        super().on_header_field(data, start, end)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        super().on_header_value(data, start, end)

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is None:
            return
        if self._file_count == 0:
            self.before_files(self.items)
        self._file_count += 1
        # swap starlette's in-memory/system-temp spool for a numbered file in our folder; the
        # client's file name is only a label, never part of a path
        spooled = self._files_to_close_on_error.pop()
        spooled.close()
        handle = open(inside(self.folder, self.folder / f"part-{self._file_count:06d}"), "w+b")  # noqa: SIM115
        self._files_to_close_on_error.append(handle)  # type: ignore[arg-type]  # starlette types it SpooledTemporaryFile; it only calls close()
        upload.file = handle


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


async def receive_upload(request: Request, user: Principal, node: Node) -> UploadResult:
    """Parse, check and ingest one upload; every refusal is audited as UPLOAD_REJECTED."""
    limits = UploadLimits.from_settings(node.settings.web)
    client = client_host(request)
    try:
        return await _receive(request, user, node, limits)
    except (UploadRejected, BodyTooLarge, MultiPartException) as exc:
        status, reason = _refusal(exc)
        await run_in_threadpool(record_rejection, node, user.name, client, reason, status)
        raise HTTPException(status, f"upload refused: {reason}") from None


def _refusal(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, UploadRejected):
        return exc.status, str(exc)
    if isinstance(exc, BodyTooLarge):
        return 413, f"{exc.detail} (web.max_upload_mb)"
    return 400, f"bad multipart body: {getattr(exc, 'message', exc)}"


async def _receive(request: Request, user: Principal, node: Node, limits: UploadLimits) -> UploadResult:
    declared = _declared_length(request)
    if declared is not None and declared > limits.max_body:
        raise UploadRejected(f"{declared} bytes declared, over the limit of {limits.max_body >> 20} MB"
                             " (web.max_upload_mb)")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadRejected("send the files as multipart/form-data (field name: files)", 415)
    if request.headers.get(CSRF_HEADER) is not None:
        await check_csrf(request, user)  # header: checked before a single body byte is read
    folder = await run_in_threadpool(new_upload_dir, node)
    form: FormData | None = None
    try:
        form = await _parse(request, user, folder, limits)
        files = [(f.filename or "upload", Path(f.file.name)) for key, f in form.multi_items()
                 if key == "files" and isinstance(f, UploadFile)]
        if not files:
            raise UploadRejected("no files in the upload (multipart field name: files)", 400)
        for upload in form.values():
            if isinstance(upload, UploadFile):
                upload.file.flush()
        return await run_in_threadpool(ingest_uploads, node, files, client_host(request), user.name, limits)
    finally:
        if form is not None:
            await form.close()
        await run_in_threadpool(shutil.rmtree, folder, True)


async def _parse(request: Request, user: Principal, folder: Path, limits: UploadLimits) -> FormData:
    def before_files(fields: list[tuple[str, str | UploadFile]]) -> None:
        # a session without the CSRF header must send the csrf_token field before any file part
        # (the console's form does): a forged upload is refused before a file byte is written
        if request.headers.get(CSRF_HEADER) is None:
            sent = next((v for k, v in fields if k == CSRF_FIELD and isinstance(v, str)), None)
            verify_csrf(request, user, sent)

    parser = UploadParser(request.headers, request.stream(), folder, limits.max_members, before_files)
    return await parser.parse()
