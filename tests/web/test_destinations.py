"""Destination health on the dashboard, in /api/destinations and /metrics, and the C-ECHO button:
a real node delivering to a real dcmtk storescp that is stopped and started again."""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.audit import record_event
from storage.db import Database, sqlite_url
from storage.events import EventCode
from storage.models import Delivery
from storage.queries import destination_health
from storage.states import DeliveryState
from tests.node.helpers import StoreSCP
from tests.web.conftest import WebNode, new_series_copy, start_node, wait_for
from tests.web.test_metrics import scrape, value

HTML = {"Accept": "text/html"}
NOW = datetime(2026, 11, 21, 12, 0, 0)


# -- the query, on a real SQLite audit database with rows as the sender writes them -----------------
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(sqlite_url(tmp_path / "audit.sqlite"))
    database.migrate()
    yield database
    database.close()


def delivery(s: Any, destination: str, state: str, created: datetime, delivered: datetime | None = None) -> Delivery:
    row = Delivery(destination=destination, ae_title=destination[:16], host="127.0.0.1", port=104,
                   sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.7", path="x.dcm", state=state,
                   created_at=created, next_attempt_at=created, delivered_at=delivered)
    s.add(row)
    s.flush()
    return row


def failure(s: Any, row: Delivery, at: datetime, why: str) -> None:
    record_event(s, EventCode.DELIVERY_ATTEMPT_FAILED, f"attempt 1 to {row.destination} failed: {why}",
                 delivery_id=row.id).at = at


def echo(s: Any, destination: str, ok: bool, at: datetime) -> None:
    record_event(s, EventCode.DESTINATION_ECHO, f"C-ECHO to {destination} {'answered' if ok else 'failed'}",
                 details={"destination": destination, "ok": ok}).at = at


def health(db: Database, names: list[str], warn_s: float = 600) -> dict[str, dict[str, Any]]:
    with db.session() as s:
        return {r["destination"]: r for r in destination_health(s, names, warn_s, now=NOW)}


def test_states_from_deliveries_failures_and_echoes(db: Database) -> None:
    with db.session() as s:
        # PACS: delivered at 11:00, then an attempt failed at 11:30 and two wait since 11:29
        delivery(s, "PACS", DeliveryState.DELIVERED, NOW - timedelta(hours=2), NOW - timedelta(hours=1))
        waiting = delivery(s, "PACS", DeliveryState.PENDING, NOW - timedelta(minutes=31))
        delivery(s, "PACS", DeliveryState.PENDING, NOW - timedelta(minutes=5))
        failure(s, waiting, NOW - timedelta(minutes=30), "no association (peer down or unreachable)")
        # ARCHIVE: two pending for 20 minutes, never failed: a backlog
        delivery(s, "ARCHIVE", DeliveryState.SENDING, NOW - timedelta(minutes=20))
        delivery(s, "ARCHIVE", DeliveryState.DELIVERED, NOW - timedelta(days=1), NOW - timedelta(days=1))
        # VIEWER: failed, then answered a C-ECHO from the console; one dead letter stays
        dead = delivery(s, "VIEWER", DeliveryState.DEAD, NOW - timedelta(hours=3))
        failure(s, dead, NOW - timedelta(hours=3), "association rejected")
        echo(s, "VIEWER", True, NOW - timedelta(minutes=1))
        # deliveries back to the calling AE go to "sender", which is not in [destinations]
        delivery(s, "sender", DeliveryState.DELIVERED, NOW - timedelta(minutes=2), NOW - timedelta(minutes=2))
    rows = health(db, ["PACS", "ARCHIVE", "VIEWER", "QUIET"])
    assert list(rows) == ["PACS", "ARCHIVE", "VIEWER", "QUIET", "sender"]  # configured first, then the others

    pacs = rows["PACS"]
    assert (pacs["state"], pacs["warning"], pacs["pending"], pacs["oldest_pending_age_s"]) == ("failing", True, 2, 31 * 60)
    assert pacs["last_success_at"] == "2026-11-21T11:00:00+00:00"
    assert pacs["last_failure_at"] == "2026-11-21T11:30:00+00:00"
    assert pacs["last_error"].endswith("no association (peer down or unreachable)")
    archive = rows["ARCHIVE"]
    assert (archive["state"], archive["warning"], archive["pending"], archive["last_error"]) == ("backlog", True, 1, None)
    assert health(db, ["ARCHIVE"], warn_s=30 * 60)["ARCHIVE"]["state"] == "ok"  # under the threshold
    viewer = rows["VIEWER"]
    assert (viewer["state"], viewer["warning"], viewer["dead"]) == ("ok", False, 1)  # the echo came after the failure
    assert viewer["last_success_at"] == "2026-11-21T11:59:00+00:00"
    assert (rows["QUIET"]["state"], rows["QUIET"]["configured"]) == ("idle", True)
    assert (rows["sender"]["state"], rows["sender"]["configured"]) == ("ok", False)

    with db.session() as s:  # a failed C-ECHO after that makes VIEWER failing again
        echo(s, "VIEWER", False, NOW)
    assert health(db, ["VIEWER"])["VIEWER"]["state"] == "failing"


# -- a node and a PACS that goes down and comes back ----------------------------------------------
@pytest.fixture(scope="module")
def pacs_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebNode, StoreSCP]]:
    root = tmp_path_factory.mktemp("pacs-node")
    # several attempts: with the PACS down, deliveries wait (pending) instead of becoming dead letters
    web = start_node(root / "node", require_login=False, max_attempts=5)
    pacs = StoreSCP(root / "pacs", port=web.node.settings.destinations["PACS"].port).start()
    yield web, pacs
    pacs.stop()
    web.node.stop()


def upload(client: httpx.Client, files: list[Path]) -> str:
    token = client.get("/api/session").json()["csrf_token"]
    response = client.post("/api/upload", files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in files],
                           headers={"X-CSRF-Token": token})
    assert response.status_code == 200, response.text
    (uid,) = response.json()["series"]
    return uid


def deliveries_of(client: httpx.Client, uid: str, predicate: Any, what: str) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        rows = client.get(f"/api/series/{uid}").json()["deliveries"]
        return rows if rows and all(predicate(d) for d in rows) else None

    return wait_for(check, 120, what)


def pacs_row(client: httpx.Client) -> dict[str, Any]:
    (row,) = [d for d in client.get("/api/destinations").json() if d["destination"] == "PACS"]
    return row


def dashboard_row(client: httpx.Client) -> str:
    page = client.get("/", headers=HTML).text
    match = re.search(r'<tr data-destination="PACS"[^>]*>', page)
    assert match, "no PACS row on the dashboard"
    return match.group(0)


def form_csrf(client: httpx.Client) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/", headers=HTML).text)
    assert match
    return match.group(1)


def test_pacs_down_and_up_on_dashboard_metrics_and_echo(pacs_node: tuple[WebNode, StoreSCP], phantom_files: list[Path],
                                                       tmp_path: Path) -> None:
    web, pacs = pacs_node
    with web.client() as c:
        first = upload(c, new_series_copy(phantom_files, tmp_path / "first"))
        deliveries_of(c, first, lambda d: d["state"] == "delivered", "the results to reach the PACS")
        up = pacs_row(c)
        assert (up["state"], up["warning"], up["pending"], up["last_failure_at"]) == ("ok", False, 0, None)
        assert up["last_success_at"] is not None
        assert 'data-state="ok"' in dashboard_row(c) and "warn-row" not in dashboard_row(c)
        samples = scrape(web)
        assert value(samples, "dicomnode_destination_warning", destination="PACS") == 0
        assert value(samples, "dicomnode_destination_pending", destination="PACS") == 0
        assert value(samples, "dicomnode_destination_last_success_timestamp_seconds", destination="PACS") == \
            datetime.fromisoformat(up["last_success_at"]).timestamp()

        pacs.stop()  # the PACS goes down: the next results wait, and the destination is failing
        second = upload(c, new_series_copy(phantom_files, tmp_path / "second"))
        waiting = deliveries_of(c, second, lambda d: d["state"] == "pending" and d["attempts"] >= 1,
                                "a failed attempt to the stopped PACS")
        down = pacs_row(c)
        assert (down["state"], down["warning"], down["pending"]) == ("failing", True, len(waiting))
        assert "no association" in down["last_error"] and down["oldest_pending_age_s"] >= 0
        assert down["last_failure_at"] >= up["last_success_at"]
        assert 'data-state="failing"' in dashboard_row(c) and "warn-row" in dashboard_row(c)
        samples = scrape(web)
        assert value(samples, "dicomnode_destination_warning", destination="PACS") == 1
        assert value(samples, "dicomnode_destination_pending", destination="PACS") == len(waiting)
        assert value(samples, "dicomnode_destination_oldest_pending_age_seconds", destination="PACS") >= 0
        assert value(samples, "dicomnode_destination_last_failure_timestamp_seconds", destination="PACS") == \
            datetime.fromisoformat(down["last_failure_at"]).timestamp()

        # the C-ECHO button: a POST with the form's CSRF token, audited with its result
        assert c.post("/destinations/PACS/echo", headers=HTML).status_code == 403
        failed = c.post("/destinations/PACS/echo", data={"csrf_token": form_csrf(c)}, headers=HTML)
        assert failed.status_code == 303 and failed.headers["location"].startswith("/?echo=")
        shown = c.get(failed.headers["location"], headers=HTML).text
        assert re.search(r'class="error" role="status" id="echo-result">C-ECHO to PACS \(PACS@127\.0\.0\.1:\d+\) by local'
                         r' from 127\.0\.0\.1 failed: ', shown)
        assert c.post("/destinations/NOWHERE/echo", data={"csrf_token": form_csrf(c)}, headers=HTML).status_code == 404

        pacs.start()  # back up: a C-ECHO from the API answers and the destination is no longer failing
        token = c.get("/api/session").json()["csrf_token"]
        answered = c.post("/api/destinations/PACS/echo", headers={"X-CSRF-Token": token})
        assert answered.status_code == 200 and answered.json()["ok"] is True, answered.text
        echoes = c.get("/api/events", params={"status": "DESTINATION_ECHO"}).json()
        assert [e["message"].split(": ")[0].rsplit(" ", 1)[1] for e in echoes[:2]] == ["answered", "failed"]
        assert all(e["code"] == 708 for e in echoes[:2])
        assert pacs_row(c)["state"] in ("ok", "backlog")  # the pending results still wait for their next attempt
