"""Two nodes on one PostgreSQL and one data directory (issue 14): one is killed with SIGKILL while it
runs a job and sends a delivery; the other takes both over when their leases expire. Every series is
analysed exactly once, every result reaches the PACS exactly once, and the takeover is audited."""
from __future__ import annotations

import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.db import Database
from storage.events import EventCode
from storage.models import Delivery, Event, Instance, Job, Series
from tests.conftest import LIDC_SERIES, require_tool
from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess, free_port, storescu, wait_for, port_open
from tests.storage.test_postgres import postgres_url  # noqa: F401  (the server fixture)

SERIES = 20
SLICES = 2
VICTIM_AE = "NODEA"


class StallingProxy:
    """A TCP proxy on loopback in front of the PACS: associations whose calling AE is `stall_ae` are
    held (the A-ASSOCIATE-RQ is read, never answered), so that node's delivery stays mid-send until
    it is killed; every other association is passed through to the PACS byte for byte."""

    def __init__(self, target_port: int, stall_ae: str) -> None:
        self.target_port, self.stall_ae = target_port, stall_ae.encode()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held = threading.Event()  # a stalled association arrived
        self._sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            header = _read(client, 6)
            body = _read(client, int.from_bytes(header[2:6], "big"))
            calling = body[20:36].strip()  # PS3.8 9.3.2: called AE at 4..20, calling AE at 20..36 of the PDU body
            if calling == self.stall_ae:
                self.held.set()
                while client.recv(4096):  # until the node is killed
                    pass
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets.append(upstream)
            upstream.sendall(header + body)
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
            _pump(client, upstream)
        except OSError:
            pass

    def close(self) -> None:
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def pacs_unique(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp writing every received object to a file of its own (+uf): a second copy of an
    instance is a second file, so counting SOP Instance UIDs shows duplicates."""
    out, port = tmp_path / "pacs", free_port()
    out.mkdir()
    proc = subprocess.Popen([require_tool("storescp"), "-aet", "PACS", "-od", str(out), "+uf", "--accept-all", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), 20, "storescp to listen")
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _make_series(folder: Path) -> list[list[Path]]:
    """SERIES small CT series (SLICES LIDC slices each) with new study, series and instance UIDs."""
    sources = sorted(p for p in LIDC_SERIES.iterdir() if p.is_file())[:SLICES]
    made = []
    for i in range(SERIES):
        study, series = generate_uid(), generate_uid()
        files = []
        for j, src in enumerate(sources):
            ds = dcmread(src)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID = f"SCALE{i:02d}"
            path = folder / f"s{i:02d}" / f"{j}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        made.append(files)
    return made


def _config(pacs_port: int, database_url: str, node_id: str, extra_sender: str = "", sender_poll: float = 0.2) -> str:
    config = node_config(pacs_port, pipeline="tests.node.pipelines:stall_after_first_pipeline", extra=f"""
[node]
database_url = "{database_url}"
node_id = "{node_id}"
heartbeat_s = 0.5
lease_s = 2.0
receive_processes = 1
""")
    config = config.replace("[jobs]\n", "[jobs]\nworkers = 1\n").replace("[sender]\n", f"[sender]\n{extra_sender}")
    return config.replace("poll_seconds = 0.2\nmax_attempts", f"poll_seconds = {sender_poll}\nmax_attempts")


def test_two_nodes_one_killed_mid_job_and_mid_delivery(postgres_url: str, pacs_unique, tmp_path: Path) -> None:  # noqa: F811
    pacs_port, pacs_dir = pacs_unique
    proxy = StallingProxy(pacs_port, VICTIM_AE)
    shared = tmp_path / "shared-data"  # one data directory (spool, outbox) for both nodes
    shared.mkdir()
    nodes: list[NodeProcess] = []

    def node(name: str, ae: str, config: str, env: dict[str, str] | None = None) -> NodeProcess:
        n = NodeProcess(shared, "", ae_title=ae, env=env)
        n.config, n.log = tmp_path / f"{name}.toml", tmp_path / f"{name}.log"
        n.config.write_text(config)
        nodes.append(n)
        return n

    try:
        # node A stalls in its second job and in every send (the proxy holds its associations)
        victim = node("a", VICTIM_AE, _config(proxy.port, postgres_url, "node-a", "connect_timeout_s = 120\n"),
                      env={"TEST_PIPELINE_STALL_DIR": str(tmp_path / "stall-a")}).start()
        # B's sender goes when B's own job finishes or B takes work over, not on a short poll: it
        # would race A's sender for A's first result, which the test needs A to be sending
        survivor = node("b", "NODEB", _config(proxy.port, postgres_url, "node-b", sender_poll=30)).start()
        series = _make_series(tmp_path / "series")
        for k in range(0, SERIES, 2):  # two series per association, alternately to each node
            target = victim if (k // 2) % 2 == 0 else survivor
            storescu(target.port, series[k] + series[k + 1], called=target.ae_title)

        db = Database(postgres_url)

        def victim_busy() -> bool:
            with db.session() as s:
                job = s.execute(select(Job.id).where(Job.state == "running", Job.claimed_by == "node-a")).first()
                send = s.execute(select(Delivery.id).where(Delivery.state == "sending", Delivery.claimed_by == "node-a")).first()
            return job is not None and send is not None and proxy.held.is_set()

        wait_for(victim_busy, 60, "node A to be running a job and sending a delivery")
        victim.kill9()

        def all_delivered() -> bool:
            with db.session() as s:
                jobs = s.execute(select(Job.state)).scalars().all()
                states = s.execute(select(Delivery.state)).scalars().all()
            return len(jobs) == SERIES and set(jobs) == {"done"} and len(states) == SERIES and set(states) == {"delivered"}

        wait_for(all_delivered, 60, "every job done and every result delivered by node B")

        with db.session() as s:
            per_series = Counter(s.execute(select(Series.series_instance_uid).join(Job, Job.series_id == Series.id)
                                           .where(Job.state == "done")).scalars())
            results = set(s.execute(select(Delivery.sop_instance_uid)).scalars())
            stored = set(s.execute(select(Instance.sop_instance_uid)).scalars())
            taken = s.execute(select(Event.code, Event.details).where(
                Event.code.in_((EventCode.JOB_LEASE_TAKEN_OVER, EventCode.DELIVERY_LEASE_TAKEN_OVER)))).all()
        sent = {str(dcmread(files[0]).SeriesInstanceUID) for files in series}
        assert stored == {str(dcmread(f).SOPInstanceUID) for files in series for f in files}  # every instance acknowledged is kept
        assert set(per_series) == sent and set(per_series.values()) == {1}  # one done job each
        received = Counter(str(dcmread(p).SOPInstanceUID) for p in pacs_dir.rglob("*") if p.is_file())
        assert set(received) == results and set(received.values()) == {1}  # each result once, none twice
        assert {code for code, _ in taken} == {EventCode.JOB_LEASE_TAKEN_OVER, EventCode.DELIVERY_LEASE_TAKEN_OVER}
        # taken over from A by B, and run again (a first attempt: not failed for its node's death)
        assert all((d["from_node"], d["by_node"], d.get("failed", False)) == ("node-a", "node-b", False) for _, d in taken)
        with db.session() as s:  # B found A dead: it ended A's sessions and routed what A completed
            lost = s.execute(select(Event.details).where(Event.code == EventCode.NODE_PRESUMED_DEAD)).scalars().all()
        assert lost == [{"node_id": "node-a", "by_node": "node-b"}]
        states = {row["node_id"]: row["state"] for row in survivor.audit("nodes")}
        assert states == {"node-a": "lost", "node-b": "running"}
        db.close()
    finally:
        for n in nodes:
            n.stop()
        proxy.close()


def test_a_series_another_node_is_routing_is_not_routed_again(postgres_url: str) -> None:  # noqa: F811
    """Node A's routing transaction holds the series (routed, not yet committed) when node B's
    router looks at it (B recovering complete series at start-up): B waits for A's decision and
    queues nothing (before: B read the committed "complete" and queued a second job)."""
    from sqlalchemy import text, update

    from dicomnode.config import Route
    from dicomnode.process.jobs import enqueue_job
    from dicomnode.process.routing import Router
    from storage.models import Study

    db = Database(postgres_url)
    db.migrate()
    with db.session() as s:
        study = Study(study_instance_uid=generate_uid())
        s.add(study)
        s.flush()
        row = Series(series_instance_uid=generate_uid(), study_id=study.id, modality="CT", status="complete",
                     instance_count=2)
        s.add(row)
        s.flush()
        series_id = row.id
    router = Router(db, [Route(name="all-ct", pipeline="tests.node.pipelines:summary_pipeline")], enqueue_job)
    with db.engine.connect() as other_node:
        routing = other_node.begin()
        other_node.execute(update(Series).where(Series.id == series_id).values(status="routed"))
        b = threading.Thread(target=router.on_series_complete, args=(series_id,))
        b.start()

        def waiting_on_a_lock() -> bool:
            with db.engine.connect() as c:
                return bool(c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).scalar())

        wait_for(waiting_on_a_lock, 30, "node B's router to wait for node A's routing transaction")
        routing.commit()
        b.join(30)
    assert not b.is_alive()
    with db.session() as s:
        assert s.execute(select(Job.id).where(Job.series_id == series_id)).all() == []
    db.close()
