"""Durable instance store.

An instance is written to a temporary name, fsynced, renamed into place and its directory
fsynced, so a crash leaves either no file or the whole file, never half of one. Layout:
<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

The UIDs come from the network: each is checked to the DICOM grammar (dicomnode.core.uids) and every
path is resolved and checked to stay under its root before it is used. Files are created 0600
and directories 0700 (received images are patient data).
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from dicomnode.core.uids import InvalidUID, check_uid

FILE_MODE = 0o600
DIR_MODE = 0o700


class SpoolError(Exception):
    pass


class OutsideRoot(SpoolError):
    """A relative path (from the network or the database) that would leave its root directory."""


def confined(root: Path, relative: str) -> Path:
    """root/relative, resolved, or OutsideRoot when it is absolute or escapes `root` (.., symlinks)."""
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        raise OutsideRoot(f"path {relative!r} is not a relative path under {root}")
    base = root.resolve()
    path = (base / relative).resolve()
    if path == base or not path.is_relative_to(base):
        raise OutsideRoot(f"path {relative!r} leaves {root}")
    return path


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
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
    """mkdir -p (new directories 0700), fsyncing each parent whose entry we created."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
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
        try:
            for name, uid in (("Study Instance UID", study_uid), ("Series Instance UID", series_uid),
                              ("SOP Instance UID", sop_uid)):
                check_uid(name, uid)
        except InvalidUID as exc:
            raise SpoolError(str(exc)) from None
        relative = f"{study_uid}/{series_uid}/{sop_uid}.dcm"
        confined(self.root, relative)
        return relative

    def store(self, relative: str, data: bytes) -> Path:
        path = confined(self.root, relative)
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
        """The file of a relative path from the database, never outside the spool."""
        return confined(self.root, relative)

    def remove_temporaries(self) -> int:
        """Drop half-written temporaries left by a crash (never acknowledged to the sender)."""
        count = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count
