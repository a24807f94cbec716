"""Upload: DICOM files or zips from the browser, through the same ingest path as C-STORE.

Each file goes to `Ingestor.store` exactly as a C-STORE would; when the upload is over the
completion clock of its series starts as if an association had been released, so the series
completes, is routed and queued like any other.
"""
from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, BinaryIO

from pydicom import dcmread

from dicomnode.ingest import SUCCESS, Sender
from storage.audit import record_event
from storage.events import EventCode

if TYPE_CHECKING:
    from dicomnode.node import Node

UPLOAD_AE = "WEB-UPLOAD"
# a zip bomb guard: no single member may expand beyond this
MAX_MEMBER_BYTES = 2 * 2**30

# Uploads share association_id None in the completion tracker; one upload at a time keeps one
# upload's end from starting the clock of a series another upload is still sending.
_upload_lock = threading.Lock()


@dataclass
class UploadResult:
    stored: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    series: dict[str, int] = field(default_factory=dict)  # SeriesInstanceUID -> instances accepted

    def to_json(self) -> dict:
        return {"stored": self.stored, "duplicates": self.duplicates,
                "failed": [{"name": n, "reason": r} for n, r in self.failed], "series": self.series}


def _members(name: str, data: bytes) -> Iterator[tuple[str, bytes | str]]:
    """(name, bytes) for each file; a zip is expanded; (name, reason) strings for unreadable parts."""
    if not zipfile.is_zipfile(BytesIO(data)):
        yield name, data
        return
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir() or info.filename.endswith("DICOMDIR") or "__MACOSX" in info.filename:
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    yield f"{name}:{info.filename}", f"larger than {MAX_MEMBER_BYTES >> 20} MB"
                    continue
                yield f"{name}:{info.filename}", archive.read(info)
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # RuntimeError: encrypted members
        yield name, f"cannot read zip: {exc}"


def _series_uid(data: bytes) -> str:
    try:
        return str(dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
    except Exception:  # the ingestor already accepted it; this is only for the summary
        return ""


def ingest_uploads(node: Node, files: list[tuple[str, BinaryIO]], client: str, user: str) -> UploadResult:
    result = UploadResult()
    sender = Sender(association_id=None, calling_ae=UPLOAD_AE, peer_host=client[:64])
    with _upload_lock:
        try:
            for name, stream in files:
                for member, content in _members(name, stream.read()):
                    if isinstance(content, str):
                        result.failed.append((member, content))
                        continue
                    outcome = node.ingestor.store(content, sender)
                    if outcome.status != SUCCESS:
                        result.failed.append((member, outcome.comment or f"status 0x{outcome.status:04X}"))
                        continue
                    if outcome.duplicate:
                        result.duplicates += 1
                    else:
                        result.stored += 1
                    uid = _series_uid(content)
                    result.series[uid] = result.series.get(uid, 0) + 1
        finally:
            # the "release": starts the completion clock of what this upload carried
            node.tracker.association_ended(None)
    with node.db.session() as s:
        record_event(s, EventCode.UPLOAD_RECEIVED,
                     f"{user} uploaded {result.stored} instance(s) from {client}"
                     f" ({result.duplicates} duplicate(s), {len(result.failed)} refused)",
                     details={"user": user, "client": client, **result.to_json(),
                              "failed": [f"{n}: {r}" for n, r in result.failed[:50]]})
    return result
