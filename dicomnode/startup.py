"""What every entry point needs before it can do anything: the audit database open and migrated, or an
error that says what an admin must fix. Apart from dicomnode.node so that `dicomnode audit` and the
other commands that only read the database start without importing the whole node."""
from __future__ import annotations

from dicomnode.config import Settings, redact_url
from dicomnode.core.durable import make_dirs_durably
from storage.db import Database


class StartupError(Exception):
    """Something an admin must fix before the node can start; the message says what."""


def open_database(settings: Settings) -> Database:
    make_dirs_durably(settings.node.data_dir)
    db = Database(settings.database_url)
    try:
        db.migrate()
    except Exception as exc:
        raise StartupError(f"cannot open the audit database {redact_url(settings.database_url)}: {exc}") from exc
    return db
