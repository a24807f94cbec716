"""Upload: DICOM files or zips from the browser, through the same ingest path as C-STORE.

Each upload is one intake session (dicomnode.receive.intake), the same way in as a C-STORE
association: each file is stored through it, and when the upload is over the session ends, which
starts the completion clock of its series, so they complete, are routed and queued like any other.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.config import WebSettings
from dicomnode.core.dimse import SUCCESS
from dicomnode.receive.intake import IntakeSession, Origin
from storage.audit import record_event
from storage.events import EventCode

if TYPE_CHECKING:
    from dicomnode.node import Node

UPLOAD_AE = "WEB-UPLOAD"
# no single file or zip member may be larger than this (each is held in memory for the ingestor)
MAX_MEMBER_BYTES = 2 * 2**30
# the compression ratio limit applies to members over this size: small headers compress very well
RATIO_FLOOR_BYTES = 2**20
READ_CHUNK = 2**20
TEMP_DIR_NAME = "web-upload"

# One upload at a time. Each upload has its own intake session, so one upload's end no longer
# starts the clock of a series another upload is still sending (uploads used to share one key);
# the lock is kept so that uploads stay serialised as before.
_upload_lock = threading.Lock()


class UploadRejected(Exception):
    """The whole upload is refused (audited as UPLOAD_REJECTED); status is the HTTP answer."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_body: int
    max_uncompressed: int
    max_members: int
    max_ratio: int

    @classmethod
    def from_settings(cls, web: WebSettings) -> UploadLimits:
        return cls(web.max_upload_mb * 2**20, web.max_zip_uncompressed_mb * 2**20, web.max_zip_members,
                   web.max_zip_ratio)


@dataclass
class UploadResult:
    stored: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    series: dict[str, int] = field(default_factory=dict)  # SeriesInstanceUID -> instances accepted

    def to_json(self) -> dict:
        return {"stored": self.stored, "duplicates": self.duplicates,
                "failed": [{"name": n, "reason": r} for n, r in self.failed], "series": self.series}


# -- temporaries ------------------------------------------------------------------------
def temp_root(node: Node) -> Path:
    """Where multipart file parts are spooled: inside the node's data directory, not the system /tmp."""
    return Path(node.settings.node.data_dir).resolve() / TEMP_DIR_NAME


def inside(root: Path, path: Path) -> Path:
    """`path`, resolved, after checking it stays under `root` (names from a request never escape)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{path} is outside {root}")
    return resolved


def new_upload_dir(node: Node) -> Path:
    root = temp_root(node)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return inside(root, Path(tempfile.mkdtemp(prefix="upload-", dir=root)))


def clear_temp_root(node: Node) -> None:
    """At start: what an earlier run left behind (a crash mid-upload) goes."""
    root = temp_root(node)
    if root.is_dir():
        for child in root.iterdir():
            shutil.rmtree(inside(root, child), ignore_errors=True)


# -- zip checks ---------------------------------------------------------------------------
@dataclass
class _Budget:
    """What the zips of one upload may still hold; checked from the directories and again while reading."""
    limits: UploadLimits
    members: int = 0
    bytes: int = 0

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UploadRejected(f"{name}: more than {self.limits.max_members} zip members in one upload"
                                 " (web.max_zip_members)")

    def add_bytes(self, name: str, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_uncompressed:
            raise UploadRejected(f"{name}: zip contents over {self.limits.max_uncompressed >> 20} MB uncompressed"
                                 " (web.max_zip_uncompressed_mb)")


def _wanted(info: zipfile.ZipInfo) -> bool:
    return not (info.is_dir() or info.filename.endswith("DICOMDIR") or "__MACOSX" in info.filename)


def check_zip(name: str, path: Path, budget: _Budget) -> None:
    """Refuse a zip from its central directory alone: member count, total size, ratio per member."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadRejected(f"{name}: cannot read zip: {exc}", 400) from None
    for info in infos:
        budget.add_member(name)
        if not _wanted(info):
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > budget.limits.max_ratio:
            raise UploadRejected(f"{name}:{info.filename[:200]} expands {ratio:.0f}-fold"
                                 f" (web.max_zip_ratio is {budget.limits.max_ratio})")
        budget.add_bytes(name, info.file_size)


def check_files(files: list[tuple[str, Path]], limits: UploadLimits) -> None:
    budget = _Budget(limits)
    for name, path in files:
        if zipfile.is_zipfile(path):
            check_zip(name, path, budget)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, label: str) -> bytes | str:
    """A member's bytes, counted against the budget as they come (the directory may lie)."""
    if info.file_size > MAX_MEMBER_BYTES:
        return f"larger than {MAX_MEMBER_BYTES >> 20} MB"
    if info.file_size == 0:
        return "empty file"
    out = bytearray()
    with archive.open(info) as stream:
        while chunk := stream.read(READ_CHUNK):
            out += chunk
            budget.add_bytes(label, len(chunk))
            if len(out) > max(info.file_size, 0):
                return "larger than its zip directory entry says"
    return bytes(out)


def _members(name: str, path: Path, budget: _Budget) -> Iterator[tuple[str, bytes | str]]:
    """(name, bytes) for each file; a zip is expanded; (name, reason) strings for unreadable parts."""
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            yield name, f"larger than {MAX_MEMBER_BYTES >> 20} MB"
        elif size == 0:
            yield name, "empty file"
        else:
            yield name, path.read_bytes()
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if _wanted(info):
                    label = f"{name}:{info.filename}"
                    yield label, _read_member(archive, info, budget, label)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:  # RuntimeError: encrypted members
        yield name, f"cannot read zip: {exc}"


def _ingest(session: IntakeSession, files: list[tuple[str, Path]], budget: _Budget, result: UploadResult) -> None:
    for name, path in files:
        for member, content in _members(name, path, budget):
            if isinstance(content, str):
                result.failed.append((member, content))
                continue
            outcome = session.store(content)
            if outcome.status != SUCCESS:
                result.failed.append((member, outcome.comment or f"status 0x{outcome.status:04X}"))
                continue
            if outcome.duplicate:
                result.duplicates += 1
            else:
                result.stored += 1
            uid = outcome.series_instance_uid or ""
            result.series[uid] = result.series.get(uid, 0) + 1


def ingest_uploads(node: Node, files: list[tuple[str, Path]], client: str, user: str,
                   limits: UploadLimits | None = None) -> UploadResult:
    """Ingest files already on disk (the caller removes them). Raises UploadRejected before taking the
    upload lock when a zip is over a limit; a zip that lies in its directory is stopped while read."""
    limits = limits or UploadLimits.from_settings(node.settings.web)
    check_files(files, limits)
    result = UploadResult()
    stopped: str | None = None
    # the session ends (and the completion clock of what it carried starts) however the upload ends
    with _upload_lock, node.intake.open(Origin(None, UPLOAD_AE, client[:64])) as session:
        try:
            _ingest(session, files, _Budget(limits), result)
        except UploadRejected as exc:  # a zip held more than its directory said: keep what was stored
            stopped = str(exc)
            result.failed.append(("(rest of the upload)", f"not read: {stopped}"))
            session.end(orderly=False)  # a cut-off upload is no evidence of a whole series: the idle timer decides
    if stopped is not None:
        record_rejection(node, user, client, f"stopped while reading: {stopped}", 413)
    with node.db.session() as s:
        record_event(s, EventCode.UPLOAD_RECEIVED,
                     f"{user} uploaded {result.stored} instance(s) from {client}"
                     f" ({result.duplicates} duplicate(s), {len(result.failed)} refused)",
                     details={"user": user, "client": client, **result.to_json(),
                              "failed": [f"{n}: {r}" for n, r in result.failed[:50]]})
    return result


def record_rejection(node: Node, user: str, client: str, reason: str, status: int) -> None:
    with node.db.session() as s:
        record_event(s, EventCode.UPLOAD_REJECTED, f"upload by {user} from {client} refused: {reason}",
                     details={"user": user, "client": client, "reason": reason[:500], "status": status})
