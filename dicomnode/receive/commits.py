"""Group commit of instance rows: the instances that concurrent associations of one process are
storing at the same moment share one database transaction, so one WAL fsync (SQLite) or one commit
(PostgreSQL) makes all of them durable instead of one fsync each, one after another.

Every caller still waits until the commit that holds its row is done before it returns (and only
then does the SCP answer success): "committed before success" holds per instance. With one
association the batch is one row, as before. Leader/follower: the first caller that finds no commit
running commits everything pending; rows that arrive meanwhile wait and go in the next batch.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, insert
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import Database
from storage.models import Instance


class AlreadyRecorded(Exception):
    """A row with this SOP Instance UID exists (a duplicate, or a copy retention removed)."""


@dataclass
class _Pending:
    values: dict[str, Any]
    done: bool = False
    inserted: bool = False
    error: BaseException | None = None


def _insert_ignoring_conflicts(dialect: str) -> Insert | None:
    """INSERT ... ON CONFLICT (sop_instance_uid) DO NOTHING: a duplicate in a batch must not fail
    the others. None where the dialect has no such form (each row is then committed on its own)."""
    table = Instance.metadata.tables[Instance.__tablename__]
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    return None


class InstanceCommitter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._plain = insert(Instance.metadata.tables[Instance.__tablename__])
        self._batched = _insert_ignoring_conflicts(db.engine.dialect.name)
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._committing = False

    def insert(self, values: dict[str, Any]) -> None:
        """Insert one instance row and return once it is committed; AlreadyRecorded when its SOP
        Instance UID has a row already; any other database error as raised."""
        row = _Pending(values)
        with self._cond:
            self._pending.append(row)
            while self._committing and not row.done:
                self._cond.wait()
            if not row.done:  # no commit running: lead one with everything pending
                self._committing = True
                batch, self._pending = self._pending, []
            else:
                batch = []
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._committing = False
                    self._cond.notify_all()
        if row.error is not None:
            raise row.error
        if not row.inserted:
            raise AlreadyRecorded(values["sop_instance_uid"])

    def _commit(self, batch: list[_Pending]) -> None:
        if self._batched is None or len(batch) == 1:
            for row in batch:
                self._commit_one(row)
            return
        try:
            with self.db.engine.begin() as conn:
                inserted = [conn.execute(self._batched, row.values).rowcount == 1 for row in batch]
        except Exception:
            # something other than a duplicate failed the batch: each row on its own, so each
            # caller gets its own row's outcome
            for row in batch:
                self._commit_one(row)
            return
        for row, ok in zip(batch, inserted):
            row.inserted, row.done = ok, True

    def _commit_one(self, row: _Pending) -> None:
        try:
            with self.db.engine.begin() as conn:
                conn.execute(self._plain, row.values)
            row.inserted = True
        except BaseException as exc:  # handed to the caller, who tells a duplicate (IntegrityError) from the rest
            row.error = exc
        finally:
            row.done = True
