"""A route's forward_to sends the source instances themselves, through the outbox's deliveries (issue 13):
real dcmtk storescu in, real dcmtk storescp as the second destination."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import text

from dicomnode.config import ConfigError, load_settings
from storage.db import Database, alembic_config, sqlite_url
from tests.conftest import LIDC_SERIES, TRANSFER_SYNTAXES
from tests.node.helpers import NodeProcess, StoreSCP, free_port, storescu, storescu_profile, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


# transfer syntaxes dcmtk's storescp --accept-all does not take: retired JPEG processes 6-8, 10-12, 14
STORESCP_REFUSES = {"1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.4.57"}


def forward_config(pacs2_port: int, *, max_attempts: int = 50, stable: float = 1.0) -> str:
    """Every CT series to the test pipeline (no result destination) and forwarded to PACS2."""
    return f"""
[series]
stable_seconds = {stable}
poll_seconds = 0.2
[sender]
backoff_initial_s = 0.5
backoff_max_s = 1
poll_seconds = 0.2
max_attempts = {max_attempts}
connect_timeout_s = 3
[jobs]
poll_seconds = 0.2
[web]
enabled = false
[[routes]]
name = "all-ct"
pipeline = "tests.node.pipelines:summary_pipeline"
forward_to = ["PACS2"]
[routes.match]
modality = ["CT"]
[destinations.PACS2]
ae_title = "PACS2"
host = "127.0.0.1"
port = {pacs2_port}
"""


def _db_rows(node: NodeProcess, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.data_dir / "audit.sqlite") as conn:
        return conn.execute(sql).fetchall()


FORWARD_COLUMNS = ("id", "state", "attempts", "last_error", "sop_instance_uid", "destination", "job_id", "series_id")


def _forwards(node: NodeProcess) -> list[dict[str, Any]]:
    """The forward deliveries, read straight from the audit database (cheap enough to poll)."""
    rows = _db_rows(node, f"SELECT {', '.join(FORWARD_COLUMNS)} FROM deliveries WHERE kind = 'forward' ORDER BY id")
    return [dict(zip(FORWARD_COLUMNS, row)) for row in rows]


def _all_forwards_settled(node: NodeProcess, count: int) -> list[dict[str, Any]] | None:
    rows = _forwards(node)
    return rows if len(rows) == count and all(d["state"] in ("delivered", "dead") for d in rows) else None


def _all_forwards_delivered(node: NodeProcess, count: int) -> list[dict[str, Any]] | None:
    rows = _forwards(node)
    return rows if len(rows) == count and all(d["state"] == "delivered" for d in rows) else None


def _unique_copies(sources: list[Path], out: Path) -> dict[str, Path]:
    """The shared transfer-syntax files reuse one SOP Instance UID: give each its own, keeping its
    syntax and (encapsulated) pixel data. Returns the copies by SOP Instance UID."""
    out.mkdir()
    copies: dict[str, Path] = {}
    for f in sources:
        ds = dcmread(f)
        ds.SOPInstanceUID = generate_uid()
        if "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f.name
        ds.save_as(path)
        copies[str(ds.SOPInstanceUID)] = path
    return copies


def test_every_transfer_syntax_is_forwarded_unchanged_even_when_the_analysis_fails(make_node, tmp_path):
    pacs2 = StoreSCP(tmp_path / "pacs2", ae_title="PACS2").start()
    try:
        # the analysis fails on every series: forwarding must not depend on it
        node = make_node(forward_config(pacs2.port, max_attempts=2), env={"TEST_PIPELINE_FAIL": "1"}).start()
        copies = _unique_copies(sorted(TRANSFER_SYNTAXES.glob("*.dcm")), tmp_path / "copies")
        syntax = {uid: str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for uid, p in copies.items()}
        for path in copies.values():
            ds = dcmread(path, stop_before_pixels=True)
            profile = storescu_profile(tmp_path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            storescu(node.port, [path], extra=profile)
        # two of the files are other series that the route does not match (not CT): never forwarded
        wait_for(lambda: len(_db_rows(node, "SELECT id FROM series WHERE status IN ('routed', 'ignored')")) == 4, 60,
                 "the four series to be routed or ignored")
        matched = {uid for (uid,) in _db_rows(node, "SELECT i.sop_instance_uid FROM instances i JOIN series s ON "
                                                    "s.id = i.series_id WHERE s.status = 'routed'")}
        assert len(matched) == len(copies) - 2
        rows = wait_for(lambda: _all_forwards_settled(node, len(matched)), 120, "every forward to PACS2 to settle")
        assert {d["sop_instance_uid"] for d in rows} == matched
        assert all(d["destination"] == "PACS2" and d["job_id"] is None and d["series_id"] for d in rows)
        # sent as received, never transcoded: a syntax the PACS does not take (dcmtk's storescp has no
        # retired JPEG processes) is a dead letter that says why, everything else arrives unchanged
        dead = {d["sop_instance_uid"]: d["last_error"] for d in rows if d["state"] == "dead"}
        assert {syntax[uid] for uid in dead} == STORESCP_REFUSES
        assert all("No presentation context" in why and "JPEG" in why for why in dead.values())

        received = {str(dcmread(p).SOPInstanceUID): p for p in pacs2.files()}
        assert set(received) == matched - set(dead), "each source instance arrives at PACS2, once"
        spool = {uid: node.data_dir / "spool" / path
                 for uid, path in _db_rows(node, "SELECT sop_instance_uid, path FROM instances")}
        for uid, got_path in received.items():
            sent, got = dcmread(copies[uid]), dcmread(got_path)
            assert got.file_meta.TransferSyntaxUID == syntax[uid], f"{copies[uid].name}: re-encoded"
            assert got.get("PixelData") == sent.get("PixelData"), f"{copies[uid].name}: pixel data changed"
            # every element as the node received it (the scanner side, storescu, already wrote the
            # one file whose encapsulated pixels were OW as OB)
            assert got == dcmread(spool[uid]), f"{copies[uid].name}: a data element changed on the way"
        listed = [d for d in node.audit("deliveries") if d["kind"] == "forward"]  # what an admin sees
        assert len(listed) == len(matched) and all(d["series_instance_uid"] for d in listed)
        # the analysis failed, the forward went out all the same; the spool still has every file
        assert {j["state"] for j in node.audit("jobs")} == {"failed"}
        spooled = _db_rows(node, "SELECT path FROM instances")
        assert len(spooled) == len(copies) and all((node.data_dir / "spool" / p).is_file() for (p,) in spooled)
        queued = [e for e in node.audit("events") if e["name"] == "FORWARD_QUEUED"]
        assert sum(int(e["message"].split()[0]) for e in queued) == len(matched)
    finally:
        pacs2.stop()


def test_destination_down_then_up_gets_each_instance_once(make_node, tmp_path):
    port = free_port()  # nothing listens here yet: PACS2 is down
    node = make_node(forward_config(port)).start()
    files = sorted(LIDC_SERIES.glob("*.dcm"))[:12]
    storescu(node.port, files)
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

    def failed_once() -> bool:
        rows = _forwards(node)
        return len(rows) == len(uids) and all(d["attempts"] >= 1 and d["state"] in ("pending", "sending") for d in rows)

    wait_for(failed_once, 60, "every forward to fail against the closed port")
    assert all(d["last_error"] for d in _forwards(node) if d["state"] == "pending")
    # the analysis result does not wait for the forward (and has no destination here)
    wait_for(lambda: node.audit("jobs") and node.audit("jobs")[0]["state"] == "done", 60, "the job")

    pacs2 = StoreSCP(tmp_path / "pacs2", port=port, ae_title="PACS2").start()
    try:
        rows = wait_for(lambda: _all_forwards_delivered(node, len(uids)), 60, "the forwards once PACS2 is up")
        assert {d["sop_instance_uid"] for d in rows} == uids, "one delivery row per instance, no duplicates"
        sent = [e for e in node.audit("events") if e["name"] == "DELIVERY_SENT"]
        assert len(sent) == len(uids), "each instance delivered exactly once"
        ((series_uid,),) = _db_rows(node, "SELECT series_instance_uid FROM series")
        assert all(e["series_instance_uid"] == series_uid for e in sent), "forward events name their series"
        received = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs2.files()]
        assert sorted(received) == sorted(uids)
        # a late instance re-opens the series: only it is forwarded, the others are not sent again
        late = _unique_copies([sorted(LIDC_SERIES.glob("*.dcm"))[20]], tmp_path / "late")
        storescu(node.port, list(late.values()))
        rows = wait_for(lambda: _all_forwards_delivered(node, len(uids) + 1), 60, "the late instance forwarded")
        assert sorted(d["sop_instance_uid"] for d in rows) == sorted(uids | set(late))
    finally:
        pacs2.stop()


def test_forward_to_must_name_a_configured_destination(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(forward_config(104).replace('forward_to = ["PACS2"]', 'forward_to = ["PACS3"]'))
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "forward_to names destination 'PACS3', which is not in [destinations] (known: PACS2)" in str(caught.value)
    config.write_text(forward_config(104).replace('forward_to = ["PACS2"]', 'forward_to = ["sender"]'))
    with pytest.raises(ConfigError, match="forward_to names destination 'sender'"):
        load_settings(config)


def test_0005_adds_kind_and_series_to_existing_deliveries_and_steps_back(tmp_path):
    db = Database(sqlite_url(tmp_path / "audit.sqlite"))
    config = alembic_config(db.engine)
    command.upgrade(config, "0004")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (study_instance_uid, patient_id, patient_name, accession_number, study_date,"
                          " study_description, first_received_at, last_received_at) VALUES ('1.2', 'P', 'N', '', '', '',"
                          " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO series (series_instance_uid, study_id, modality, body_part, series_description,"
                          " image_type, calling_ae, peer_host, instance_count, status, generation, first_received_at,"
                          " last_received_at) VALUES ('1.2.3', 1, 'CT', '', '', '', 'A', '127.0.0.1', 0, 'routed', 1,"
                          " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO jobs (series_id, series_generation, pipeline, route_name, destinations, state,"
                          " attempts, queued_at) VALUES (1, 1, 'lung-nodule', 'r', '[]', 'done', 1, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO deliveries (job_id, destination, ae_title, host, port, tls, sop_instance_uid,"
                          " sop_class_uid, path, state, attempts, created_at, next_attempt_at) VALUES (1, 'PACS', 'PACS',"
                          " '127.0.0.1', 104, 0, '1.2.3.9', '1.2.840.10008.5.1.4.1.1.7', '1.2.3/1.2.3.9.dcm', 'delivered',"
                          " 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    command.upgrade(config, "head")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT kind, series_id, state FROM deliveries")).all() == [("result", 1, "delivered")]
        assert conn.execute(text("SELECT supersedes_job_id FROM jobs")).all() == [(None,)]
    command.downgrade(config, "0004")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT sop_instance_uid, state FROM deliveries")).all() == [("1.2.3.9", "delivered")]
        assert conn.execute(text("SELECT state FROM jobs")).all() == [("done",)]
    db.close()
