"""Retention in a running node: a CT sent by dcmtk storescu, analysed, delivered to a dcmtk storescp
PACS, then removed by the node's own retention loop; the console's API says so, and the node keeps
receiving, analysing and delivering the next series."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from dicomnode.cli.served import ServedNode
from dicomnode.config import load_settings
from storage.events import EventCode
from storage.models import Event, Instance, Job, Series
from storage.states import JobState, SeriesState
from tests.conftest import LIDC_SERIES, TRANSFER_SYNTAXES
from tests.node.helpers import StoreSCP, free_port, storescu, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


@pytest.fixture
def node(tmp_path: Path, pacs: StoreSCP) -> Iterator[ServedNode]:
    config = tmp_path / "node.toml"
    config.write_text(f"""
[series]
stable_seconds = 0.3
poll_seconds = 0.1
[jobs]
poll_seconds = 0.1
[sender]
poll_seconds = 0.2
[retention]
source_days = 0
results_days = 0
interval_seconds = 0.3
high_water_percent = 99
low_water_percent = 98
[web]
host = "127.0.0.1"
port = 0
min_free_disk_mb = 1
[[routes]]
name = "all-ct"
pipeline = "tests.node.pipelines:summary_pipeline"
destinations = ["PACS"]
[routes.match]
modality = ["CT"]
[destinations.PACS]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs.port}
""")
    settings = load_settings(config, {"node.data_dir": tmp_path / "data", "node.port": free_port(),
                                      "node.host": "127.0.0.1", "node.min_free_disk_mb": 1})
    served = ServedNode(settings)
    served.start()
    yield served
    served.stop()


def _deleted_instances(node: ServedNode, series_uid: str) -> tuple[int, int]:
    with node.db.session() as s:
        rows = s.execute(select(func.count(Instance.id), func.count(Instance.deleted_at))
                         .join(Series).where(Series.series_instance_uid == series_uid)).one()
    return int(rows[0]), int(rows[1])


def test_delivered_series_removed_by_the_node_shown_in_the_api_and_the_node_keeps_receiving(
        node: ServedNode, pacs: StoreSCP) -> None:
    files = sorted(LIDC_SERIES.glob("*.dcm"))[:4]
    first = dcmread(files[0], stop_before_pixels=True)
    uid, study_uid = str(first.SeriesInstanceUID), str(first.StudyInstanceUID)
    spool_folder = node.settings.spool_dir / study_uid / uid
    outbox_folder = node.settings.outbox_dir / uid

    storescu(node.settings.node.port, files)
    wait_for(lambda: len(pacs.files()) == 1, 60, "the result at the PACS")
    wait_for(lambda: _deleted_instances(node, uid) == (4, 4) and not spool_folder.exists()
             and not outbox_folder.exists(), 60, "retention to remove the delivered series' files")

    with httpx.Client(base_url=f"http://127.0.0.1:{node.web.port}", timeout=30) as client:
        response = client.get(f"/api/series/{uid}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["series"]["status"] == "routed" and detail["jobs"][0]["state"] == "done"
    with node.db.session() as s:
        day = s.execute(select(func.max(Instance.deleted_at))).scalar_one().date().isoformat()
    said = sorted(e["message"].split(",")[0] for e in detail["events"] if e["name"] == "RETENTION_DELETED")
    assert said == [f"files removed by retention on {day}: 1 outbox files (results)",
                    f"files removed by retention on {day}: 4 source instances"]
    assert all(d["state"] == "delivered" for d in detail["deliveries"])  # the record stays

    # the PACS sends the series again: stored again (not "duplicate ignored"), analysed and delivered
    # again, then removed again once delivered
    storescu(node.settings.node.port, files)

    def analysed_again() -> bool:
        with node.db.session() as s:
            states = s.execute(select(Job.state).join(Series).where(Series.series_instance_uid == uid)
                               .order_by(Job.id)).scalars().all()
            removed = s.execute(select(func.count(Event.id)).where(
                Event.series_instance_uid == uid, Event.code == int(EventCode.RETENTION_DELETED))).scalar_one()
        return states == [JobState.DONE, JobState.DONE] and removed == 4 and _deleted_instances(node, uid) == (4, 4)

    wait_for(analysed_again, 60, "the resent series to be analysed, delivered and removed again")
    with node.db.session() as s:
        assert s.execute(select(func.count(Event.id)).where(Event.code == int(EventCode.INSTANCE_DUPLICATE))).scalar() == 0

    # the next series is received, analysed and delivered as before
    other = TRANSFER_SYNTAXES / "CTImage.dcm"
    other_uid = str(dcmread(other, stop_before_pixels=True).SeriesInstanceUID)
    assert other_uid != uid
    storescu(node.settings.node.port, [other])
    wait_for(lambda: len(pacs.files()) == 2, 60, "the second series' result at the PACS")
    assert _deleted_instances(node, other_uid)[0] == 1


def test_a_restart_finishes_a_removal_a_crash_left_half_done(tmp_path: Path) -> None:
    from dicomnode.node import Node
    from dicomnode.retention.executor import Executor
    from dicomnode.retention.policy import plan
    from dicomnode.retention.survey import series_facts
    from storage.models import utcnow
    from tests.node.test_retention import World, _all_there, _gone

    # the periodic loop is off: only the start-up recovery can finish the removal
    world = World(tmp_path, enabled=False)
    series = world.series(SeriesState.ROUTED, days_ago=40)
    executor = Executor(world.db, world.settings)
    for removal in plan(series_facts(world.db, world.settings), world.settings.retention, utcnow()).removals:
        assert executor.mark(removal) is not None  # marked; then the process died before deleting
    world.db.close()
    assert _all_there(series)

    settings = world.settings.model_copy(deep=True)
    settings.node.port, settings.node.host, settings.node.min_free_disk_mb = free_port(), "127.0.0.1", 1
    node = Node(settings)
    node.start()
    try:
        assert node.retention is None and _gone(series)
        with node.db.session() as s:
            events = s.execute(select(Event.details).where(Event.code == int(EventCode.RETENTION_DELETED))).scalars().all()
        assert sorted(d["what"] for d in events) == ["outbox", "source"]
    finally:
        node.stop()
