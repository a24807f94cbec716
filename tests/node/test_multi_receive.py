"""Several receiver processes behind the one DICOM port (node.receive_processes, issue 16): real
dcmtk storescu and pynetdicom senders in parallel, a series split over associations that land on
different processes, and kill -9 of a receiver in the middle of a series. One node for the module;
each test sends its own series (fresh UIDs). No test asserts how long anything took."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess, wait_for
from tests.node.test_completion_evidence import (SERIES_COMPLETE, _lidc_by_position, make_series, query, series_events,
                                                 series_row, series_uid_of)

RECEIVER_STARTED, RECEIVER_EXITED = 103, 104
TIMER = 4.0  # series.stable_seconds: what completes a series a killed receiver was receiving
WAIT = 60.0  # generous: the CI machine is shared
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("multi")
    config = node_config(stable=TIMER).replace("[series]\n", "[node]\nreceive_processes = 2\n[series]\n", 1)
    proc = NodeProcess(root / "data", config).start()
    wait_for(lambda: len(receiver_pids(proc)) == 2, WAIT, "both receiver processes")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slices() -> list[Path]:
    return _lidc_by_position()


def receiver_pids(node: NodeProcess) -> set[int]:
    """The pids of the receivers running now: started and not exited since."""
    rows = query(node, "SELECT code, details FROM events WHERE code IN (?, ?) ORDER BY id", RECEIVER_STARTED,
                 RECEIVER_EXITED)
    import json
    alive: set[int] = set()
    for row in rows:
        pid = json.loads(row["details"])["pid"]
        (alive.add if row["code"] == RECEIVER_STARTED else alive.discard)(pid)
    return alive


def association(node: NodeProcess, calling: str):  # -> (pynetdicom Association, receiver pid)
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    row = wait_for(lambda: query(node, "SELECT receiver_pid FROM associations WHERE calling_ae = ?", calling),
                   WAIT, f"the association row of {calling}")
    return assoc, row[0]["receiver_pid"]


def associations_on_two_processes(node: NodeProcess, tag: str):
    """Two open associations served by different receiver processes (the second goes to the less
    loaded one; tried again a few times should a busy machine delay the first one's count)."""
    first, first_pid = association(node, f"{tag}A")
    for attempt in range(40):
        second, second_pid = association(node, f"{tag}B{attempt}")
        if second_pid != first_pid:
            return first, second, {first_pid, second_pid}
        second.release()
    first.release()
    raise AssertionError("40 associations all landed on one receiver process")


def connection_loads(node: NodeProcess) -> list[int | None]:
    """What each receiver publishes as its number of connections (dicomnode.receive.balance)."""
    from dicomnode.receive.balance import ConnectionLoads

    (path,) = node.data_dir.glob("receivers-*.loads")
    with ConnectionLoads(path, 0) as loads:
        return loads.loads()


def stored(node: NodeProcess, files: list[Path]) -> dict[str, str]:
    """SOP Instance UID -> spool path of every instance of `files` the audit database holds."""
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    rows = query(node, f"SELECT sop_instance_uid, path FROM instances WHERE sop_instance_uid IN ({','.join('?' * len(uids))})",
                 *uids)
    return {r["sop_instance_uid"]: r["path"] for r in rows}


def wait_complete_once(node: NodeProcess, uid: str) -> str:
    events = wait_for(lambda: series_events(node, uid, SERIES_COMPLETE), WAIT, f"SERIES_COMPLETE of {uid}")
    return events[0]["message"]


def test_parallel_associations_store_every_instance_once(node, tmp_path, slices):
    """Three series, each split over two storescu associations, plus a seventh that sends one half
    again at the same time: every instance is stored once (file and row), every association is
    audited, and each series completes once with all its instances."""
    series = [make_series(tmp_path / f"s{i}", slices[40 * i:40 * i + 12]) for i in range(3)]
    # alternate slices: neither half alone is evidence of a whole series, so nothing completes
    # early should one association start late on a busy machine
    parts = [half for files in series for half in (files[0::2], files[1::2])] + [series[0][0::2]]
    senders = [subprocess.Popen(["storescu", "-aet", f"PAR{i}", "-aec", "DICOMNODE", "127.0.0.1", str(node.port),
                                 *map(str, part)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
               for i, part in enumerate(parts)]
    assert [p.wait(120) for p in senders] == [0] * len(parts)
    for files in series:
        uid = series_uid_of(files)
        assert "12 instances" in wait_complete_once(node, uid)
        rows = stored(node, files)
        assert len(rows) == 12
        assert all((node.data_dir / "spool" / path).is_file() for path in rows.values())
    time.sleep(1.0)  # a second completion would come within a checker poll or two
    for files in series:
        assert len(series_events(node, series_uid_of(files), SERIES_COMPLETE)) == 1
    duplicates = query(node, "SELECT SUM(duplicates) AS n FROM instances")[0]["n"]
    assert duplicates == 6  # the seventh association's six, each counted on the one stored row
    audited = query(node, "SELECT state, instances_received, receiver_pid FROM associations WHERE calling_ae LIKE 'PAR%'")
    assert len(audited) == 7 and {r["state"] for r in audited} == {"released"}
    assert {r["receiver_pid"] for r in audited} <= receiver_pids(node)


def test_associations_spread_evenly_over_the_receivers(node):
    """Six associations held open at once: three on each receiver process (the kernel's SO_REUSEPORT
    hashing, used before, gave 4+2 or 5+1 in three runs of this test)."""
    from collections import Counter

    # a port probe's connection counts until pynetdicom ends it (the idle timeout): start from none
    wait_for(lambda: connection_loads(node) == [0, 0], WAIT, "no connection on either receiver")
    held = [association(node, f"SPREAD{i}") for i in range(6)]
    try:
        per_process = Counter(pid for _, pid in held)
        assert sorted(per_process.values()) == [3, 3], per_process
        assert set(per_process) == receiver_pids(node)
    finally:
        for assoc, _ in held:
            assoc.release()


def test_a_series_split_over_two_processes_completes_once_after_both(node, tmp_path, slices):
    files = make_series(tmp_path / "split", slices[150:170])
    uid = series_uid_of(files)
    first, second, pids = associations_on_two_processes(node, "SPL")
    assert len(pids) == 2
    for f in files[:10]:
        assert first.send_c_store(dcmread(f)).Status == 0
    for f in files[10:]:
        assert second.send_c_store(dcmread(f)).Status == 0
    first.release()
    # the whole series is in and one association released: the other process still holds it open
    time.sleep(TIMER + 2.0)  # past the evidence grace and the idle timer
    assert series_row(node, uid)["status"] == "receiving"
    assert series_events(node, uid, SERIES_COMPLETE) == []
    second.release()
    message = wait_complete_once(node, uid)
    assert "20 instances on evidence" in message
    time.sleep(1.0)
    assert len(series_events(node, uid, SERIES_COMPLETE)) == 1


def test_kill9_of_a_receiver_mid_series_loses_nothing_acknowledged(node, tmp_path, slices):
    files = make_series(tmp_path / "killed", slices[200:216])
    uid = series_uid_of(files)
    before = receiver_pids(node)
    assoc, pid = association(node, "KILLED")
    acknowledged = [f for f in files[:8] if assoc.send_c_store(dcmread(f)).Status == 0]
    assert len(acknowledged) == 8
    os.kill(pid, signal.SIGKILL)  # the association is open, the series half sent
    try:
        status = assoc.send_c_store(dcmread(files[8]))
        assert not status or status.Status != 0  # the peer is gone: no success for this one
    except RuntimeError:
        pass  # pynetdicom saw the connection close first
    assoc.abort()
    # the node notices, audits it and starts another receiver in its place
    wait_for(lambda: pid not in receiver_pids(node) and len(receiver_pids(node)) == 2, WAIT,
             "the killed receiver to be replaced")
    assert receiver_pids(node) - before  # a new pid
    exited = query(node, "SELECT message FROM events WHERE code = ? AND message LIKE ?", RECEIVER_EXITED,
                   f"%(pid {pid}) died (killed by SIGKILL)%")
    assert len(exited) == 1 and "1 open association(s) closed as aborted" in exited[0]["message"]
    row = query(node, "SELECT state, ended_at FROM associations WHERE calling_ae = 'KILLED'")[0]
    assert row["state"] == "aborted" and row["ended_at"] is not None
    # everything acknowledged is recorded and on disk; the series completes on the idle timer
    rows = stored(node, acknowledged)
    assert len(rows) == 8 and all((node.data_dir / "spool" / p).is_file() for p in rows.values())
    message = wait_complete_once(node, uid)
    assert "after the idle timer" in message and query(node, "SELECT COUNT(*) AS n FROM open_intake")[0]["n"] == 0
    # and the node still receives: the rest of the series re-opens it, all 16 are kept
    rest, rest_pid = association(node, "AFTERKILL")
    for f in files[8:]:
        assert rest.send_c_store(dcmread(f)).Status == 0
    rest.release()
    assert rest_pid in receiver_pids(node)
    wait_for(lambda: len(series_events(node, uid, SERIES_COMPLETE)) == 2, WAIT, "the re-opened series to complete")
    assert series_row(node, uid)["instance_count"] == 16


def test_a_receiver_left_by_a_dead_node_is_killed_before_a_new_node_listens(tmp_path: Path) -> None:
    """After kill -9 of a node its receivers exit on their own, but until they do they hold the port
    (the old node's listening socket, inherited), so a new node could not bind it: the next start
    kills those still there, only those."""
    from dicomnode.receive.receivers import reap_stale_receivers

    # Each child says it runs before the test looks: Popen returns once exec has closed the pipe it
    # watches, and for a moment after that the kernel shows an empty /proc/PID/cmdline.
    sleeper = "print('running', flush=True); import time; time.sleep(120)"
    stale = subprocess.Popen([sys.executable, "-c", sleeper, "dicomnode.receive.receivers"], stdout=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", sleeper, "something.else"], stdout=subprocess.PIPE)
    try:
        for proc in (stale, other):
            assert proc.stdout is not None and proc.stdout.readline() == b"running\n"
        pid_file = tmp_path / "receivers-host.pids"
        pid_file.write_text(f"{stale.pid}\n{other.pid}\n999999999\n")
        assert reap_stale_receivers(pid_file) == [stale.pid]
        assert stale.wait(10) == -signal.SIGKILL
        assert other.poll() is None  # not a receiver: left alone
        assert reap_stale_receivers(tmp_path / "missing.pids") == []
    finally:
        for proc in (stale, other):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
