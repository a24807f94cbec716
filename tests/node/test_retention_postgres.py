"""Retention's queries and conditional marks on a real PostgreSQL server (several nodes may share one)."""
from __future__ import annotations

from pathlib import Path

from storage.events import EventCode
from storage.states import DeliveryState, JobState, SeriesState
from tests.node.test_retention import World, _all_there, _gone
from tests.storage.test_postgres import postgres_url  # noqa: F401  (the server fixture)

from dicomnode.retention.service import run_pass


def test_retention_on_postgresql(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    world = World(tmp_path, database_url=postgres_url)
    old = world.series(SeriesState.ROUTED, days_ago=40)
    young = world.series(SeriesState.ROUTED, days_ago=5)
    failed = world.series(SeriesState.ROUTED, days_ago=40, job=JobState.FAILED)
    dead = world.series(SeriesState.ROUTED, days_ago=40, deliveries=(DeliveryState.DEAD,))
    sizes = {(old.uid, "source", old.source_bytes), (old.uid, "outbox", old.outbox_bytes)}

    run_pass(world.db, world.settings)

    assert _gone(old) and all(_all_there(m) for m in (young, failed, dead))
    events = world.events(EventCode.RETENTION_DELETED)
    assert {(e.series_instance_uid, e.details["what"], e.details["bytes"]) for e in events} == sizes
    assert not world.present(old.uid) and world.present(young.uid)
    world.db.close()
