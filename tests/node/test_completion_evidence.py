"""Series completion on evidence, as a scanner sees it: real node processes, dcmtk storescu and
pynetdicom as senders. The idle timer is set long (60 s) wherever a completion within the test's
waits can only be the evidence path; no test asserts how long anything took."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import LIDC_SERIES
from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess, storescu, wait_for

SERIES_COMPLETE, SERIES_REOPENED, ASSOCIATION_RELEASED = 401, 402, 204
LONG_TIMER = 60.0  # nothing in these tests waits this long: a completion seen is the evidence path
WAIT = 45.0  # generous: the CI machine is shared


def _series_config(stable: float = LONG_TIMER, grace: float | None = None, route_extra: str = "") -> str:
    config = node_config(stable=stable, route_extra=route_extra)
    if grace is not None:
        config = config.replace(f"stable_seconds = {stable}\n",
                                f"stable_seconds = {stable}\nevidence_grace_seconds = {grace}\n", 1)
    return config


def _lidc_by_position() -> list[Path]:
    files = sorted(p for p in LIDC_SERIES.iterdir() if p.is_file())
    return sorted(files, key=lambda f: float(dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def lidc_slices() -> list[Path]:
    return _lidc_by_position()


def make_series(folder: Path, sources: list[Path], study_uid: str | None = None, **attributes: Any) -> list[Path]:
    """Copies of real LIDC slices as a new series (fresh UIDs), in the order given."""
    folder.mkdir(parents=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    out: list[Path] = []
    for i, src in enumerate(sources):
        ds = dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def series_uid_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def query(node: NodeProcess, sql: str, *params: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{node.data_dir / 'audit.sqlite'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def series_row(node: NodeProcess, uid: str) -> sqlite3.Row:
    return query(node, "SELECT * FROM series WHERE series_instance_uid = ?", uid)[0]


def series_events(node: NodeProcess, uid: str, *codes: int) -> list[sqlite3.Row]:
    rows = query(node, "SELECT id, code, message, at FROM events WHERE series_instance_uid = ? ORDER BY id", uid)
    return [r for r in rows if not codes or r["code"] in codes]


def association_event_ids(node: NodeProcess, code: int) -> list[int]:
    return [r["id"] for r in query(node, "SELECT id FROM events WHERE code = ? ORDER BY id", code)]


def wait_complete(node: NodeProcess, uid: str, count: int = 1, timeout: float = WAIT) -> list[sqlite3.Row]:
    return wait_for(lambda: (lambda ev: ev if len(ev) >= count else None)(series_events(node, uid, SERIES_COMPLETE)),
                    timeout, f"SERIES_COMPLETE #{count} of {uid}")


def wait_reason(node: NodeProcess, uid: str, words: str) -> sqlite3.Row:
    return wait_for(lambda: (lambda r: r if r["status_reason"] and words in r["status_reason"] else None)(series_row(node, uid)),
                    WAIT, f"the series to say why it waits ({words!r})")


def test_a_whole_series_completes_on_evidence_long_before_the_timer(make_node, tmp_path, lidc_slices):
    node = make_node(_series_config()).start()
    files = make_series(tmp_path / "whole", lidc_slices[100:130])
    uid = series_uid_of(files)
    storescu(node.port, files)
    complete = wait_complete(node, uid)
    assert len(complete) == 1 and "30 instances on evidence" in complete[0]["message"]
    # after the association's A-RELEASE, not before
    assert complete[0]["id"] > association_event_ids(node, ASSOCIATION_RELEASED)[-1]
    row = wait_for(lambda: (lambda r: r if r["status"] == "routed" else None)(series_row(node, uid)), WAIT, "routing")
    assert row["instance_count"] == 30 and row["generation"] == 1
    geometry = query(node, "SELECT slice_position_mm, orientation, number_of_frames FROM instances")
    assert len({g["slice_position_mm"] for g in geometry}) == 30 and {g["orientation"] for g in geometry} == {
        "1.00000\\0.00000\\0.00000\\0.00000\\1.00000\\0.00000"}


def test_a_missing_slice_waits_for_the_timer_while_a_whole_series_does_not(make_node, tmp_path, lidc_slices):
    node = make_node(_series_config(stable=10.0, grace=0.5)).start()
    gapped = make_series(tmp_path / "gapped", lidc_slices[100:115] + lidc_slices[116:130])
    whole = make_series(tmp_path / "whole", lidc_slices[140:170])
    gapped_uid, whole_uid = series_uid_of(gapped), series_uid_of(whole)
    storescu(node.port, gapped + whole)  # one association carries both
    wait_complete(node, whole_uid)
    row = wait_reason(node, gapped_uid, "a gap")
    assert row["status"] == "receiving" and row["evidence_due_at"] is None
    time.sleep(2.0)  # the grace (0.5 s) has long passed; the timer (10 s) has not
    assert series_row(node, gapped_uid)["status"] == "receiving"
    assert series_events(node, gapped_uid, SERIES_COMPLETE) == []
    complete = wait_complete(node, gapped_uid)
    assert len(complete) == 1 and "29 instances after the idle timer" in complete[0]["message"]
    assert series_row(node, gapped_uid)["status_reason"] is None  # complete: the wait is over


def test_a_series_split_over_two_associations_completes_once_after_both(make_node, tmp_path, lidc_slices):
    """Alternate slices first: evenly spaced, but twice the slice thickness apart, so not whole."""
    node = make_node(_series_config()).start()
    files = make_series(tmp_path / "split", lidc_slices[60:120])
    uid = series_uid_of(files)
    storescu(node.port, files[0::2], calling="SCANNER1")
    row = wait_reason(node, uid, "wider than the slice thickness")
    assert row["status"] == "receiving" and row["instance_count"] == 30
    storescu(node.port, files[1::2], calling="SCANNER2")
    complete = wait_complete(node, uid)
    assert "60 instances on evidence" in complete[0]["message"]
    released = association_event_ids(node, ASSOCIATION_RELEASED)
    assert len(released) == 2 and complete[0]["id"] > max(released)
    wait_for(lambda: series_row(node, uid)["status"] == "routed", WAIT, "routing")
    assert len(series_events(node, uid, SERIES_COMPLETE)) == 1
    assert len(query(node, "SELECT id FROM jobs")) == 1


def test_an_instance_still_arriving_on_another_association_blocks_completion(make_node, tmp_path, lidc_slices):
    from pynetdicom import AE

    node = make_node(_series_config(grace=0.5)).start()
    files = make_series(tmp_path / "blocked", lidc_slices[0:20])
    uid = series_uid_of(files)
    ae = AE(ae_title="SLOWSCAN")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    slow = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert slow.is_established
    try:
        assert slow.send_c_store(dcmread(files[10])).Status == 0
        storescu(node.port, files[:10] + files[11:])  # the rest, released: whole, but one association is open
        assert len(query(node, "SELECT id FROM instances")) == 20  # storescu returned: all acknowledged
        time.sleep(2.0)  # well past the grace
        assert series_row(node, uid)["status"] == "receiving"
        assert series_events(node, uid, SERIES_COMPLETE) == []
    finally:
        slow.release()
    complete = wait_complete(node, uid)
    assert "20 instances on evidence" in complete[0]["message"]
    assert complete[0]["id"] > max(association_event_ids(node, ASSOCIATION_RELEASED))


def test_an_aborted_association_is_no_evidence(make_node, tmp_path, lidc_slices):
    from pynetdicom import AE

    node = make_node(_series_config(stable=8.0, grace=0.5)).start()
    files = make_series(tmp_path / "aborted", lidc_slices[20:40])
    uid = series_uid_of(files)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    for f in files:
        assert assoc.send_c_store(dcmread(f)).Status == 0
    assoc.abort()  # every slice is in, but the sender did not say it was done
    row = wait_reason(node, uid, "aborted")
    assert row["status"] == "receiving" and row["evidence_due_at"] is None
    complete = wait_complete(node, uid)
    assert "20 instances after the idle timer" in complete[0]["message"]


def test_a_late_instance_reopens_and_completes_again_on_evidence(make_node, tmp_path, lidc_slices):
    node = make_node(_series_config()).start()
    files = make_series(tmp_path / "late", lidc_slices[200:221])
    uid = series_uid_of(files)
    storescu(node.port, files[:20])
    wait_complete(node, uid)
    wait_for(lambda: query(node, "SELECT id FROM jobs WHERE state = 'done'"), WAIT, "the first job")
    storescu(node.port, files[20:])  # the next slice along, late
    complete = wait_complete(node, uid, count=2)
    assert [e["code"] for e in series_events(node, uid, SERIES_COMPLETE, SERIES_REOPENED)] == [
        SERIES_COMPLETE, SERIES_REOPENED, SERIES_COMPLETE]
    assert "21 instances on evidence" in complete[1]["message"]
    jobs = wait_for(lambda: (lambda j: j if len(j) == 2 else None)(
        query(node, "SELECT series_generation FROM jobs WHERE state = 'done' ORDER BY id")), WAIT, "the second job")
    assert [j["series_generation"] for j in jobs] == [1, 2]


def test_one_series_per_study_still_chooses_after_evidence(make_node, tmp_path, lidc_slices):
    """A thin and a thick series of one study, both whole: the route analyses only the thin one."""
    node = make_node(_series_config(route_extra="one_series_per_study = true")).start()
    study = generate_uid()
    thin = make_series(tmp_path / "thin", lidc_slices[100:140], study_uid=study)
    thick = make_series(tmp_path / "thick", lidc_slices[100:140:4], study_uid=study, SliceThickness="5.0")
    storescu(node.port, thin + thick)
    for uid in (series_uid_of(thin), series_uid_of(thick)):
        assert "on evidence" in wait_complete(node, uid)[0]["message"]
    wait_for(lambda: series_row(node, series_uid_of(thick))["status"] == "not_selected", WAIT, "the choice")
    assert series_row(node, series_uid_of(thin))["status"] == "routed"
    assert len(query(node, "SELECT id FROM jobs")) == 1


def test_the_real_lidc_series_completes_on_evidence(make_node, lidc_slices, capsys):
    node = make_node(_series_config()).start()
    uid = series_uid_of(lidc_slices)
    storescu(node.port, LIDC_SERIES)
    complete = wait_complete(node, uid)
    assert f"{len(lidc_slices)} instances on evidence" in complete[0]["message"]
    last = query(node, "SELECT max(received_at) AS t FROM instances")[0]["t"]
    with capsys.disabled():  # for the record (pytest -s), not asserted
        from datetime import datetime
        waited = (datetime.fromisoformat(complete[0]["at"]) - datetime.fromisoformat(last)).total_seconds()
        print(f"\nlidc-idri-0002 ({len(lidc_slices)} slices): last C-STORE recorded -> SERIES_COMPLETE {waited:.2f} s")


def test_the_grace_is_checked_against_the_timer(tmp_path):
    from dicomnode.config import ConfigError, load_settings

    config = tmp_path / "node.toml"
    config.write_text("[series]\nstable_seconds = 30\nevidence_grace_seconds = 0\n")
    assert load_settings(config).series.evidence_grace_seconds == 0.0
    config.write_text("[series]\nstable_seconds = 0.3\n")  # the default grace (1.5 s) under a short timer
    assert load_settings(config).series.evidence_grace_seconds == 1.5
    for bad, words in (("evidence_grace_seconds = 31", "must not be longer than stable_seconds (30)"),
                       ("evidence_grace_seconds = -1", "series.evidence_grace_seconds")):
        config.write_text(f"[series]\nstable_seconds = 30\n{bad}\n")
        with pytest.raises(ConfigError, match=r"(?s)" + words.replace("(", r"\(").replace(")", r"\)")):
            load_settings(config)


def test_a_restart_drops_pending_evidence_and_the_timer_completes(make_node, tmp_path, lidc_slices):
    """kill -9 inside the grace: a session cut off with the old process may have been adding to the
    series, so after the restart only the timer completes it (and nothing acknowledged is lost)."""
    node = make_node(_series_config(stable=8.0, grace=6.0)).start()
    files = make_series(tmp_path / "restart", lidc_slices[50:70])
    uid = series_uid_of(files)
    storescu(node.port, files)
    wait_for(lambda: series_row(node, uid)["evidence_due_at"] is not None, WAIT, "the evidence to be recorded")
    node.kill9()
    node.start()
    complete = wait_complete(node, uid)
    assert len(complete) == 1 and "20 instances after the idle timer" in complete[0]["message"]
    assert len(query(node, "SELECT id FROM instances")) == 20
