"""The Alembic migrations build exactly the schema the models describe, and step down and up again."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from storage.db import Database, alembic_config, sqlite_url
from storage.models import Base


def _series_columns(db: Database) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns("series")}


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "audit.sqlite"))
    db.migrate()
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.close()
    assert differences == [], "a model changed without a migration (alembic revision --autogenerate)"


def test_open_associations_dropped_and_restored_with_rows_kept(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "audit.sqlite"))
    db.migrate()
    assert "open_associations" not in _series_columns(db)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (study_instance_uid, patient_id, patient_name, accession_number,"
                          " study_date, study_description, first_received_at, last_received_at) VALUES ('1.2.3', 'P', 'N', '', '', '', "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO series (series_instance_uid, study_id, modality, body_part, "
                          "series_description, image_type, calling_ae, peer_host, instance_count, status, generation,"
                          " first_received_at, last_received_at) VALUES ('1.2.3.4', 1, 'CT', '', '', '', 'A', "
                          "'127.0.0.1', 0, 'receiving', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    config = alembic_config(db.engine)
    command.downgrade(config, "0002")
    assert "open_associations" in _series_columns(db)
    command.upgrade(config, "head")
    assert "open_associations" not in _series_columns(db)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT series_instance_uid FROM series")).scalars().all() == ["1.2.3.4"]
    db.close()
