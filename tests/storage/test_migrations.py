"""The Alembic migrations build exactly the schema the models describe, and step down and up again."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from storage.db import Database, alembic_config, sqlite_url
from storage.models import Base


def _insert_study_and_series(conn: Connection, status: str) -> None:
    """One study (1.2.3) with one series (1.2.3.4), written with plain SQL so any schema revision takes it."""
    conn.execute(text("INSERT INTO studies (study_instance_uid, patient_id, patient_name, accession_number,"
                      " study_date, study_description, first_received_at, last_received_at) VALUES ('1.2.3', 'P', 'N',"
                      " '', '', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    conn.execute(text("INSERT INTO series (series_instance_uid, study_id, modality, body_part, series_description,"
                      " image_type, calling_ae, peer_host, instance_count, status, generation, first_received_at,"
                      " last_received_at) VALUES ('1.2.3.4', 1, 'CT', '', '', '', 'A', '127.0.0.1', 0, :status, 0,"
                      " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"status": status})


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
        _insert_study_and_series(conn, status='receiving')
    config = alembic_config(db.engine)
    command.downgrade(config, "0002")
    assert "open_associations" in _series_columns(db)
    command.upgrade(config, "head")
    assert "open_associations" not in _series_columns(db)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT series_instance_uid FROM series")).scalars().all() == ["1.2.3.4"]
    db.close()


def _finding_columns(db: Database) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns("findings")}


def test_0004_renames_malignancy_to_model_score_keeping_rows_and_steps_back(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "audit.sqlite"))
    config = alembic_config(db.engine)
    command.upgrade(config, "0003")
    with db.engine.begin() as conn:  # a finding recorded by a node before issue 11
        _insert_study_and_series(conn, status='done')
        conn.execute(text("INSERT INTO jobs (series_id, series_generation, pipeline, route_name, destinations, state, "
                          "attempts, queued_at) VALUES (1, 0, 'lung-nodule', '', '[]', 'done', 1, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO findings (job_id, series_id, \"index\", center_x_mm, center_y_mm, center_z_mm, "
                          "diameter_mm, volume_mm3, probability, malignancy, lung_rads, sop_instance_uid, \"row\", "
                          "\"column\") VALUES (1, 1, 1, 1.0, 2.0, 3.0, 9.5, 449.0, 0.93, 0.62, '4A', '1.2.3.4.5', 32.0, 32.0)"))
    command.upgrade(config, "head")
    assert {"model_score", "nodule_type", "brock_risk", "mean_diameter_mm", "lung_rads_reasons"} <= _finding_columns(db)
    assert "malignancy" not in _finding_columns(db)
    with db.engine.connect() as conn:
        kept = conn.execute(text("SELECT model_score, lung_rads, nodule_type, brock_risk FROM findings")).all()
    assert [tuple(r) for r in kept] == [(0.62, "4A", None, None)]  # old rows: value kept, new facts unknown
    command.downgrade(config, "0003")
    assert "malignancy" in _finding_columns(db) and "model_score" not in _finding_columns(db)
    assert "nodule_type" not in _finding_columns(db)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT malignancy FROM findings")).scalars().all() == [0.62]
    db.close()


def test_every_state_value_fits_its_column() -> None:
    """SQLite ignores VARCHAR widths, PostgreSQL refuses a longer value: 'awaiting_commitment' (19)
    in deliveries.state (16) broke storage commitment on PostgreSQL until revision 0016."""
    from storage import states
    from storage.models import Base

    columns = {("deliveries", "state"): states.DeliveryState, ("deliveries", "kind"): states.DeliveryKind,
               ("jobs", "state"): states.JobState, ("series", "status"): states.SeriesState,
               ("series", "role"): states.SeriesRole, ("associations", "state"): states.AssociationState,
               ("prior_retrievals", "state"): states.PriorRetrievalState}
    for (table, column), enum in columns.items():
        width = Base.metadata.tables[table].columns[column].type.length
        too_long = [v.value for v in enum if len(str(v.value)) > width]
        assert not too_long, f"{table}.{column} is VARCHAR({width}); too long: {too_long}"
