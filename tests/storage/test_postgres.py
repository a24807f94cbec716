"""The audit database on a real PostgreSQL server: migrations, the ingest path and the admin queries.

SQLite is the default; this proves a PostgreSQL URL works for several nodes sharing one database.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import pytest

from tests.conftest import LIDC_SERIES
from tests.node.helpers import free_port, wait_for

PG_BIN = sorted(glob("/usr/lib/postgresql/*/bin"))


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    # initdb and postgres refuse to run as root
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not PG_BIN:
        pytest.skip("Debian package postgresql is not installed (.ci/run installs it)")
    pytest.importorskip("psycopg", reason="pip extra dicomnode[postgres] is not installed")
    bin_dir = PG_BIN[-1]
    # not under pytest's tmp root: that is private to root, and the server runs as postgres
    data = Path(tempfile.mkdtemp(prefix="dicomnode-pg-")) / "data"
    data.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (data.parent, data):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    init = _as_postgres([f"{bin_dir}/initdb", "-D", str(data), "-U", "dicomnode", "--auth=trust"])
    assert init.returncode == 0, init.stderr
    port = free_port()
    server = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", f"{bin_dir}/postgres", "-D", str(data), "-p", str(port),
         "-k", str(data), "-c", "listen_addresses=127.0.0.1"] if os.geteuid() == 0 else
        [f"{bin_dir}/postgres", "-D", str(data), "-p", str(port), "-k", str(data), "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _as_postgres([f"{bin_dir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0,
                 60, "PostgreSQL to accept connections")
        created = _as_postgres([f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "dicomnode", "audit"])
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg://dicomnode@127.0.0.1:{port}/audit"
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data.parent, ignore_errors=True)


def test_ingest_and_queries_on_postgresql(postgres_url, tmp_path: Path):
    from dicomnode.receive.ingest import Ingestor, Origin
    from dicomnode.receive.lifecycle import SeriesLifecycle
    from dicomnode.receive.spool import Spool
    from storage.db import Database
    from storage.queries import AuditFilter, run_query

    db = Database(postgres_url)
    db.migrate()
    db.migrate()  # idempotent: a second node starting on the same database
    tracker = SeriesLifecycle(db)
    spool = Spool(tmp_path / "spool", 0)
    spool.ensure_writable()
    ingestor = Ingestor(db, spool, tracker)
    files = sorted(LIDC_SERIES.iterdir())[:5]
    sender = Origin(None, "SCANNER", "127.0.0.1")
    for f in files:
        assert ingestor.store(f.read_bytes(), sender).status == 0
    assert ingestor.store(files[0].read_bytes(), sender).duplicate
    tracker.session_ended(None)
    completed: list[int] = []
    assert tracker.complete_due(0.0, completed.append) == 1
    with db.session() as s:
        instances = run_query(s, "instances", AuditFilter())
        series = run_query(s, "series", AuditFilter(status="complete"))
        events = run_query(s, "events", AuditFilter(status="INSTANCE_DUPLICATE"))
    assert len(instances) == 5 and sorted(r["duplicates"] for r in instances) == [0, 0, 0, 0, 1]
    assert len(series) == 1 and series[0]["instance_count"] == 5 and series[0]["id"] == completed[0]
    assert len(events) == 1
    db.close()


def test_two_nodes_atna_exporters_send_each_audit_message_once(postgres_url, tmp_path: Path):
    """Several nodes on one database each run the ATNA exporter: the locked cursor row lets each
    batch of audit events go to the repository once, not once per node."""
    import socket
    import threading

    from dicomnode.atna.exporter import AtnaExporter
    from dicomnode.config import load_settings
    from storage.audit import record_event
    from storage.db import Database
    from storage.events import EventCode

    repository = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    repository.bind(("127.0.0.1", 0))
    repository.settimeout(2)
    config = tmp_path / "node.toml"
    config.write_text(f'[atna]\nenabled = true\nhost = "127.0.0.1"\nport = {repository.getsockname()[1]}\n'
                      'transport = "udp"\nbatch_size = 3\n')
    settings = load_settings(config)
    db = Database(postgres_url)
    db.migrate()
    exporters = [AtnaExporter(Database(postgres_url), settings) for _ in range(2)]  # two nodes' own engines
    with db.session() as s:
        for i in range(30):
            record_event(s, EventCode.NODE_STARTED, f"node start {i}")
    start = threading.Barrier(2)

    def export(exporter: AtnaExporter) -> None:
        start.wait()
        for _ in range(40):  # 10 batches of 3 would do for one alone
            exporter.export_batch(flush=True)

    threads = [threading.Thread(target=export, args=(e,)) for e in exporters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    received: list[bytes] = []
    try:
        while True:
            received.append(repository.recv(65536))
    except socket.timeout:
        pass
    finally:
        repository.close()
        for e in exporters:
            e.db.close()
        db.close()
    assert len(received) == 30, f"{len(received)} audit messages for 30 events"
    assert len(set(received)) == 30  # each event's message once (each names its own event time)


def test_two_nodes_expire_an_overdue_storage_commitment_once(postgres_url):
    """Each node's sender expires overdue storage-commitment transactions: on one database a
    delivery must be failed (and retried) once, not once per node."""
    import threading
    from datetime import timedelta

    from sqlalchemy import func, select

    from storage.commitment import RetryPolicy, expire_overdue
    from storage.db import Database
    from storage.events import EventCode
    from storage.models import Delivery, Event, utcnow
    from storage.states import DeliveryState

    db = Database(postgres_url)
    db.migrate()
    long_ago = utcnow() - timedelta(hours=1)
    with db.session() as s:
        rows = [Delivery(destination="PACS", ae_title="PACS", host="127.0.0.1", port=104, sop_instance_uid=f"1.2.3.{i}",
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", path=f"x/{i}.dcm", attempts=1,
                         state=DeliveryState.AWAITING_COMMITMENT, delivered_at=long_ago,
                         commit_transaction_uid="1.2.826.0.1.3680043.8.498.77", commit_requested_at=long_ago)
                for i in range(10)]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    policy = RetryPolicy(max_attempts=5, backoff_initial_s=60, backoff_max_s=600)
    nodes = [Database(postgres_url) for _ in range(2)]
    start = threading.Barrier(2)
    failed: list[list[int]] = []

    def expire(node_db: Database) -> None:
        start.wait()
        with node_db.session() as s:
            failed.append(expire_overdue(s, 60, policy))

    threads = [threading.Thread(target=expire, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        with db.session() as s:
            events = s.execute(select(func.count()).select_from(Event).where(
                Event.code == int(EventCode.DELIVERY_COMMIT_FAILED), Event.delivery_id.in_(ids))).scalar_one()
            states = set(s.execute(select(Delivery.state).where(Delivery.id.in_(ids))).scalars())
    finally:
        for n in nodes:
            n.close()
        db.close()
    assert sorted(failed[0] + failed[1]) == sorted(ids)  # each delivery failed by exactly one node
    assert events == 10 and states == {DeliveryState.PENDING}
