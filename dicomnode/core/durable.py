"""Durable, confined file writes: what every stage that puts files on disk relies on.

A file is written to a temporary name, fsynced, renamed into place and its directory fsynced, so a
crash leaves either no file or the whole file, never half of one. Files are created 0600 and
directories 0700 (received images and results are patient data). Every relative path that comes
from the network or the database is resolved and checked to stay under its root before use.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


class OutsideRoot(Exception):
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (file and directory entry on disk)."""
    # pid and thread: two receiver processes may write the same instance at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # O_NOFOLLOW: a link planted at the temporary name is refused, not written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
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
