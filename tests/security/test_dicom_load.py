"""Issue 9: 50 concurrent associations against one node with the default limit (16).

Every refusal a client sees is in the audit trail, every acknowledged instance is in the database
and the spool, and a monitor's C-ECHO is answered (success or an audited refusal) during the load,
never left to time out, and succeeds after it. Bounded: a few seconds.

How fast the monitor is answered (the issue's 1 s) is a timing, and timings are not asserted in tests
on a noisy 2-core machine: the test prints the slowest answer, and `benchmarks/responsiveness.py`
measures it over several runs against the bound.
"""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

from pydicom.uid import generate_uid

from tests.conftest import require_tool
from tests.security.dicom_helpers import (  # noqa: F401  (make_node is a fixture)
    Audit, associate, ct_dataset, encode_implicit, eventually, make_node, raw_store,
)

CLIENTS = 50
INSTANCES_PER_CLIENT = 3
ECHO_TIMEOUT_S = 5  # echoscu gives up after this: an echo not answered by then is "failed"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    refused: int = 0
    acknowledged: dict[str, tuple[str, str]] = field(default_factory=dict)  # sop -> (study, series)
    errors: list[str] = field(default_factory=list)


def client(port: int, index: int, start: threading.Barrier, tally: Tally) -> None:
    start.wait()
    assoc = associate(port, calling=f"LOAD{index:02d}")
    if assoc.is_rejected:
        with tally.lock:
            tally.refused += 1
        return
    if not assoc.is_established:
        with tally.lock:
            tally.errors.append(f"client {index}: neither established nor rejected")
        return
    try:
        series, study = generate_uid(), generate_uid()
        for n in range(INSTANCES_PER_CLIENT):
            ds = ct_dataset(study, series, InstanceNumber=n + 1)
            status = raw_store(assoc, encode_implicit(ds), message_id=n + 1)
            if status is not None and status.Status == 0x0000:
                with tally.lock:
                    tally.acknowledged[str(ds.SOPInstanceUID)] = (study, series)
    finally:
        assoc.release()


def echo_once(port: int) -> tuple[str, float]:
    """('ok' | 'refused' | 'failed', seconds) for one monitor C-ECHO by dcmtk's echoscu: a separate
    process, so the 50 client threads of this test cannot slow the monitor down."""
    started = time.monotonic()
    result = subprocess.run([require_tool("echoscu"), "-aet", "MONITOR", "-aec", "DICOMNODE", "-to", str(ECHO_TIMEOUT_S),
                             "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
    seconds = time.monotonic() - started
    if result.returncode == 0:
        return "ok", seconds
    if "Association Rejected" in result.stderr:
        return "refused", seconds
    return f"failed: {result.stderr.strip()[-200:]}", seconds


def test_fifty_concurrent_associations(make_node) -> None:
    node = make_node()
    audit = Audit(node)
    tally = Tally()
    start = threading.Barrier(CLIENTS)
    threads = [threading.Thread(target=client, args=(node.port, i, start, tally)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    echoes: list[tuple[str, float]] = []
    while any(t.is_alive() for t in threads) and len(echoes) < 200:
        echoes.append(echo_once(node.port))
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not tally.errors, tally.errors
    after = echo_once(node.port)
    assert after[0] == "ok", f"C-ECHO must succeed after the load: {after}"

    # every refusal seen by a client (load and monitor) is audited, exactly once
    refused_seen = tally.refused + sum(1 for outcome, _ in echoes if outcome == "refused")
    assert tally.refused > 0, "50 concurrent associations against 16 slots should see refusals"
    assert eventually(lambda: audit.count("ASSOCIATION_REFUSED_LIMIT") == refused_seen), (
        audit.count("ASSOCIATION_REFUSED_LIMIT"), refused_seen)
    assert audit.rows("SELECT count(*) FROM associations WHERE state = 'rejected'")[0][0] == refused_seen

    # every acknowledged instance is recorded and its file is in the spool
    recorded = audit.instance_paths()
    missing = set(tally.acknowledged) - set(recorded)
    assert not missing, f"{len(missing)} acknowledged instance(s) not in the database"
    for sop, (study, series) in tally.acknowledged.items():
        assert recorded[sop] == f"{study}/{series}/{sop}.dcm"
        assert (node.data_dir / "spool" / recorded[sop]).is_file()

    # the monitor was answered every time: success, or a refusal that is audited, never a time-out
    unanswered = [(outcome, round(seconds, 2)) for outcome, seconds in echoes if outcome not in ("ok", "refused")]
    # the figure for the record (pytest -s): how long the slowest monitor C-ECHO waited
    print(f"dicom load: {len(echoes)} monitor C-ECHOs, slowest {max(s for _, s in echoes):.3f} s; "
          f"{tally.refused} refused and audited, {len(tally.acknowledged)} instances acknowledged")
    assert echoes and not unanswered, f"monitor C-ECHOs not answered: {unanswered}"
