"""Durable instance store.

An instance is written to a temporary name, fsynced, renamed into place and its directory
fsynced, so a crash leaves either no file or the whole file, never half of one. Layout:
<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

_UID_RE = re.compile(r"^[0-9.]{1,64}$")


class SpoolError(Exception):
    pass


class DiskFull(SpoolError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (file and directory entry on disk)."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def make_dirs_durably(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry we created."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


class Spool:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    def ensure_writable(self) -> None:
        """Fail at start-up, with the path, if the spool cannot be written."""
        try:
            make_dirs_durably(self.root)
            probe = self.root / ".write-probe"
            write_durably(probe, b"ok")
            probe.unlink()
        except OSError as exc:
            raise SpoolError(f"spool directory {self.root} is not writable: {exc.strerror or exc}") from exc

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int) -> None:
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise DiskFull(
                f"only {free // 2**20} MiB free in {self.root}, below the {self.min_free_bytes // 2**20} MiB threshold"
            )

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        for uid in (study_uid, series_uid, sop_uid):
            if not _UID_RE.match(uid):
                raise SpoolError(f"invalid UID {uid!r}")
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def store(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        parent = path.parent
        if parent not in self._known_dirs:
            self._make_parent(parent)
        try:
            write_durably(path, data)
        except FileNotFoundError:
            # someone removed the directory under us (cleanup script, admin): make it again once
            self._known_dirs.discard(parent)
            self._make_parent(parent)
            write_durably(path, data)
        return path

    def _make_parent(self, parent: Path) -> None:
        with self._dirs_lock:
            make_dirs_durably(parent)
            self._known_dirs.add(parent)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def remove_temporaries(self) -> int:
        """Drop half-written temporaries left by a crash (never acknowledged to the sender)."""
        count = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count
