"""Durable instance store.

An instance is written with dicomnode.core.durable (temporary name, fsync, rename, directory
fsync: a crash leaves either no file or the whole file). Layout:
<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

The UIDs come from the network: each is checked to the DICOM grammar (dicomnode.core.uids) and every
path is resolved and checked to stay under its root before it is used. Files are created 0600
and directories 0700 (received images are patient data).
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from dicomnode.core import durable
from dicomnode.core.durable import make_dirs_durably, write_durably
from dicomnode.core.uids import InvalidUID, check_uid


class SpoolError(Exception):
    pass


class OutsideRoot(SpoolError, durable.OutsideRoot):
    """A spool path that would leave the spool (a SpoolError, so spool callers need catch only that)."""


def confined(root: Path, relative: str) -> Path:
    try:
        return durable.confined(root, relative)
    except durable.OutsideRoot as exc:
        raise OutsideRoot(str(exc)) from None


class DiskFull(SpoolError):
    pass


class Spool:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._known_dirs: dict[str, Path] = {}  # relative directory -> its resolved, confined path
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
        # UIDs are digits and dots with no empty component: the path cannot name "..", "/" or a
        # root of its own; store() resolves its directory (symlinks) before anything is written
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def store(self, relative: str, data: bytes) -> Path:
        directory, _, name = relative.rpartition("/")
        if directory and name not in ("", ".", "..") and "\x00" not in name:
            # a plain file name in a directory resolved and confined once (realpath per instance
            # was a tenth of the receive handler's time); the file is written under a temporary
            # name opened without following links, then renamed over whatever the name was
            parent = self._known_dirs.get(directory) or self._make_parent(directory)
            path = parent / name
        else:
            path = confined(self.root, relative)
            parent = path.parent
            make_dirs_durably(parent)
        try:
            write_durably(path, data)
        except FileNotFoundError:
            # someone removed the directory under us (cleanup script, admin): make it again once
            self._known_dirs.pop(directory, None)
            make_dirs_durably(confined(self.root, directory) if directory else self.root)
            write_durably(path, data)
        return path

    def _make_parent(self, directory: str) -> Path:
        parent = confined(self.root, directory)
        with self._dirs_lock:
            make_dirs_durably(parent)
            self._known_dirs[directory] = parent
        return parent

    def path(self, relative: str) -> Path:
        """The file of a relative path from the database, never outside the spool."""
        return confined(self.root, relative)

    def remove_temporaries(self, older_than_s: float = 0.0) -> int:
        """Drop half-written temporaries left by a crash (never acknowledged to the sender); with a
        spool shared by several nodes only those untouched for `older_than_s` seconds (the others may
        be another node's writes in progress)."""
        count = 0
        cutoff = time.time() - older_than_s
        for tmp in self.root.rglob(".*.tmp"):
            try:
                if older_than_s and tmp.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue  # renamed into place meanwhile
            tmp.unlink(missing_ok=True)
            count += 1
        return count
