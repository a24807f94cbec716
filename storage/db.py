"""Engine, sessions and schema migrations of the audit database.

SQLite is the embedded default; any SQLAlchemy URL works (PostgreSQL for several nodes).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# the audit database holds patient names and ids: owner only. SQLite gives its -wal, -shm and
# -journal files the mode of the database file, so creating that one 0600 covers them all.
DB_FILE_MODE = 0o600


class Database:
    """One engine and a session factory; safe to share between threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def migrate(self) -> None:
        upgrade_to_head(self.engine)

    def close(self) -> None:
        self.engine.dispose()


def rows_changed(s: Session, statement: UpdateBase) -> int:
    """Runs an INSERT/UPDATE/DELETE in the session; returns how many rows it matched."""
    # a DML statement's result is always a CursorResult (the Result that carries rowcount), but
    # Session.execute is typed to return the base Result
    return cast("CursorResult[Any]", s.execute(statement)).rowcount


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite URL, or None (in-memory, other databases)."""
    parsed = make_url(url)
    if not parsed.get_backend_name() == "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:") or parsed.query.get("mode") == "memory":
        return None  # URI filenames: SQLite opens them itself
    return Path(parsed.database)


def secure_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would use the umask, often 0644), and
    take group and other access away from an existing one and its companion files."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_FILE_MODE))
    except FileExistsError:
        pass
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(DB_FILE_MODE)
        except FileNotFoundError:
            continue
        except PermissionError:
            log.warning("cannot make %s private (owner-only): not its owner", candidate)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None and path.parent.is_dir():
            secure_sqlite_file(path)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web console and CLI read while the node writes; synchronous=FULL makes a
    # commit durable before the C-STORE success status goes out.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # here: a receiver process never migrates

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the schema with Alembic, so an older database keeps its rows."""
    from alembic import command

    cfg = alembic_config(engine)
    tables = set(inspect(engine).get_table_names())
    if tables and "alembic_version" not in tables:
        raise RuntimeError(
            f"database {engine.url!r} has tables but no alembic_version: not a dicomnode database"
        )
    command.upgrade(cfg, "head")
