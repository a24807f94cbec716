"""Removing what the policy chose: mark, then delete, then audit; crash-safe and confined.

1. mark (one transaction): re-check that the series is still finished as planned (the state may
   have changed since the survey), set instances.deleted_at / series.*_deleted_at and write a
   `retention_purges` row listing the files with their size and mtime;
2. delete: unlink each listed file that is still the one listed (a file rewritten since, e.g. by a
   new job writing the same deterministic UID, is kept), then fsync the directories;
3. finish (one transaction): the purge row is closed and RETENTION_DELETED recorded with the bytes.
A crash after 1 leaves an open purge row: `finish_pending` (every pass, and at node start) completes
it. Paths come from the database (i.e. the network): a file whose directory resolves outside its
root (a symlink out of the data dir) is never touched, and a symlink is removed, never followed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from dicomnode.config import Settings
from dicomnode.core.durable import OutsideRoot, confined
from dicomnode.core.sizes import human_bytes
from dicomnode.retention.policy import OUTBOX, SOURCE, Removal
from dicomnode.retention.survey import outbox_folder, walk_files
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Instance, Job, RetentionPurge, Series, utcnow
from storage.queries import series_with_unsent_deliveries
from storage.states import JobState, SeriesState

log = logging.getLogger(__name__)

_FINAL = (SeriesState.ROUTED, SeriesState.IGNORED, SeriesState.NOT_SELECTED)


class _Changed(Exception):
    """The series is no longer as planned: nothing is marked."""


@dataclass(frozen=True)
class Finished:
    purge_id: int
    series_uid: str
    what: str
    bytes: int
    files: int
    kept_changed: int  # rewritten since marked: kept
    refused: int  # outside the root (symlinked directory): kept


def _target(root: Path, relative: str) -> Path:
    """The file itself (not what a symlink points to), in a directory that resolves under root."""
    rel = PurePosixPath(relative)
    if rel.name in ("", ".", "..") or str(rel.parent) in ("", "."):
        raise OutsideRoot(f"path {relative!r} is not a file in a folder under {root}")
    return confined(root, str(rel.parent)) / rel.name


def _listing(root: Path, relatives: list[str]) -> list[list[Any]]:
    """[[relative, size, mtime_ns], ...] of the files that exist (lstat: a symlink is itself)."""
    files: list[list[Any]] = []
    for relative in relatives:
        try:
            st = _target(root, relative).lstat()
        except OutsideRoot:
            files.append([relative, 0, 0])  # listed so that the refusal is counted and audited
            continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        files.append([relative, st.st_size, st.st_mtime_ns])
    return files


class Executor:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.roots = {SOURCE: Path(settings.spool_dir), OUTBOX: Path(settings.outbox_dir)}

    # -- 1. mark ------------------------------------------------------------------------------
    def mark(self, removal: Removal) -> int | None:
        """The purge id, or None when the series changed since it was planned (then nothing is marked)."""
        try:
            with self.db.session() as s:
                return self._mark(s, removal)
        except _Changed as exc:
            log.info("retention: %s of series %s kept: %s", removal.what, removal.series_uid, exc)
            return None

    def _mark(self, s: Session, r: Removal) -> int:
        now = utcnow()
        column = Series.files_deleted_at if r.what == SOURCE else Series.results_deleted_at
        # the first statement writes, so (on SQLite) the checks and the marks are one step against
        # the stages that would make the series busy again (a late instance, a new job)
        if not rows_changed(s, update(Series).where(*self._still_finished(r)).values({column: now})):
            raise _Changed("no longer finished as planned (re-opened, re-queued, or already being removed)")
        if series_with_unsent_deliveries(s, r.series_id):
            raise _Changed("a delivery is no longer sent")
        files = self._files_to_mark(s, r, now)
        purge = RetentionPurge(series_id=r.series_id, what=r.what, reason=r.reason, files=files, marked_at=now,
                               bytes=sum(f[1] for f in files), file_count=len(files))
        s.add(purge)
        s.flush()
        return purge.id

    @staticmethod
    def _still_finished(r: Removal) -> list[Any]:
        latest_done = (select(Job.state).where(Job.series_id == Series.id).order_by(Job.id.desc()).limit(1)
                       .scalar_subquery() == JobState.DONE)
        return [
            Series.id == r.series_id, Series.generation == r.generation, Series.status.in_(_FINAL),
            (Series.status != SeriesState.ROUTED) | latest_done,
            ~exists().where(Job.series_id == Series.id, Job.state.in_((JobState.QUEUED, JobState.RUNNING))),
            ~exists().where(RetentionPurge.series_id == Series.id, RetentionPurge.what == r.what,
                            RetentionPurge.finished_at.is_(None)),
        ]

    def _files_to_mark(self, s: Session, r: Removal, now: Any) -> list[list[Any]]:
        root = self.roots[r.what]
        if r.what == SOURCE:
            rows = s.execute(select(Instance.id, Instance.path)
                             .where(Instance.series_id == r.series_id, Instance.deleted_at.is_(None))).all()
            s.execute(update(Instance).where(Instance.id.in_([i for i, _ in rows])).values(deleted_at=now))
            return _listing(root, [p for _, p in rows])
        folder = outbox_folder(root, r.series_uid)
        if folder is None:
            return []
        return [[path.relative_to(root.resolve()).as_posix(), st.st_size, st.st_mtime_ns]
                for path, st in walk_files(folder)]

    # -- 2. delete, 3. finish -----------------------------------------------------------------
    def finish(self, purge_id: int) -> Finished | None:
        """Delete the purge's files and close it with its audit event; None when already closed."""
        with self.db.session() as s:
            row = s.execute(select(RetentionPurge, Series.series_instance_uid)
                            .join(Series, RetentionPurge.series_id == Series.id)
                            .where(RetentionPurge.id == purge_id, RetentionPurge.finished_at.is_(None))).first()
        if row is None:
            return None
        purge, series_uid = row
        kept, refused = self._delete(self.roots[purge.what], purge.files or [], series_uid, purge.what)
        done = Finished(purge.id, series_uid, purge.what, purge.bytes, purge.file_count, kept, refused)
        with self.db.session() as s:
            closed = rows_changed(s, update(RetentionPurge)
                                  .where(RetentionPurge.id == purge_id, RetentionPurge.finished_at.is_(None))
                                  .values(finished_at=utcnow(), files=None))
            if not closed:
                return None  # another pass (the CLI, the node) closed it first
            self._audit(s, done, purge.reason, purge.marked_at)
        return done

    def finish_pending(self) -> int:
        """Complete the purges a crash (or a concurrent pass) left open."""
        with self.db.session() as s:
            ids = s.execute(select(RetentionPurge.id).where(RetentionPurge.finished_at.is_(None))
                            .order_by(RetentionPurge.id)).scalars().all()
        return sum(1 for purge_id in ids if self.finish(purge_id) is not None)

    def _delete(self, root: Path, files: list[list[Any]], series_uid: str, what: str) -> tuple[int, int]:
        kept = refused = 0
        folders: set[Path] = set()
        for relative, size, mtime_ns in files:
            try:
                target = _target(root, relative)
            except OutsideRoot as exc:
                refused += 1
                log.warning("retention: not removing %s of series %s: %s", relative, series_uid, exc)
                continue
            try:
                st = target.lstat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone already (a pass that crashed after deleting it)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                kept += 1  # written again since it was marked
                continue
            target.unlink(missing_ok=True)
            folders.add(target.parent)
        _prune(root, folders)
        return kept, refused

    @staticmethod
    def _audit(s: Session, done: Finished, reason: str, marked_at: Any) -> None:
        label = {SOURCE: "source instances", OUTBOX: "outbox files (results)"}[done.what]
        why = "older than the retention period" if reason == "age" else "disk above the high-water mark"
        day = marked_at.date().isoformat()
        note = (f"; kept {done.kept_changed} rewritten since" if done.kept_changed else "") + \
               (f"; refused {done.refused} outside the data directory" if done.refused else "")
        record_event(s, EventCode.RETENTION_DELETED,
                     f"files removed by retention on {day}: {done.files} {label}, {human_bytes(done.bytes)} ({why}){note}",
                     series_instance_uid=done.series_uid,
                     details={"what": done.what, "bytes": done.bytes, "files": done.files, "reason": reason,
                              "purge_id": done.purge_id, "kept_changed": done.kept_changed, "refused": done.refused})


def _prune(root: Path, folders: set[Path]) -> None:
    """Remove the emptied folders up to (not including) the root; fsync what changed."""
    base = root.resolve()
    touched: set[Path] = set()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder
        while current != base and current.is_relative_to(base) and _rmdir_if_empty(current):
            current = current.parent
        touched.add(current)  # the deepest folder still there: its entries changed
    for folder in touched:
        _fsync_dir(folder)


def _rmdir_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:  # not empty (another series, a new instance), or already gone
        return False
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
