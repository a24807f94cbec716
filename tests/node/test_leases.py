"""Leases of several nodes on one database (dicomnode.process.cluster), row by row on SQLite: start-up
re-queues only the node's own work, an expired lease is taken over once and audited, a node whose job
was taken over cannot finish it, and a node id a live node holds is refused."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from dicomnode.deliver.outbox import Outbox
from dicomnode.deliver.sender import ResultSender
from dicomnode.process.cluster import Identity, NodeIdInUse, leave, register_node, requeue_own_jobs, take_over_expired
from dicomnode.process.jobs import JobRunner
from dicomnode.process.pipelines import PipelineContext, PipelineOutput
from dicomnode.receive.spool import Spool
from storage.events import EventCode
from storage.models import Delivery, Job, NodeRow, utcnow
from storage.states import DeliveryState, JobState, SeriesState
from tests.node.test_retention import World

ME, OTHER = "node-b", "node-a"


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.settings.node.node_id = ME
    return w


def _held(world: World, owner: str, lease_s: float, delivery: bool = True) -> tuple[int, int | None]:
    """A running job (and a delivery mid-send) claimed by `owner`, its lease ending in `lease_s` seconds."""
    world.series(SeriesState.ROUTED, 0, job=JobState.RUNNING, deliveries=(), files=0)
    with world.db.session() as s:
        job_id = s.execute(select(Job.id).order_by(Job.id.desc()).limit(1)).scalar_one()
        until = utcnow() + timedelta(seconds=lease_s)
        s.execute(update(Job).where(Job.id == job_id).values(claimed_by=owner, lease_expires_at=until))
        delivery_id = None
        if delivery:
            d = Delivery(job_id=job_id, destination="PACS", ae_title="PACS", host="127.0.0.1", port=4242,
                         sop_instance_uid=f"1.2.3.{job_id}", sop_class_uid="1.2.3", path="x.dcm",
                         state=DeliveryState.SENDING, claimed_by=owner, lease_expires_at=until)
            s.add(d)
            s.flush()
            delivery_id = d.id
    return job_id, delivery_id


def _state(world: World, job_id: int, delivery_id: int | None = None) -> tuple[str, str | None]:
    with world.db.session() as s:
        job = s.get(Job, job_id)
        d = s.get(Delivery, delivery_id) if delivery_id is not None else None
        assert job is not None
        return job.state, d.state if d is not None else None


def test_startup_requeues_only_this_nodes_running_work(world: World) -> None:
    mine = _held(world, ME, 30)
    live_other = _held(world, OTHER, 30)
    assert requeue_own_jobs(world.db, ME) == 1
    assert ResultSender(world.db, world.settings.outbox_dir, world.settings).recover() == 1
    assert _state(world, *mine) == (JobState.QUEUED, DeliveryState.PENDING)
    # another live node's work is left alone (before: every running job went back to the queue)
    assert _state(world, *live_other) == (JobState.RUNNING, DeliveryState.SENDING)


def test_expired_lease_is_taken_over_once_and_audited(world: World) -> None:
    me = Identity(ME, timedelta(seconds=30))
    live = _held(world, OTHER, 30)
    dead = _held(world, OTHER, -1)
    taken = take_over_expired(world.db, me)
    assert (taken.jobs, taken.deliveries) == (1, 1)
    assert _state(world, *dead) == (JobState.QUEUED, DeliveryState.PENDING)
    assert _state(world, *live) == (JobState.RUNNING, DeliveryState.SENDING)
    again = take_over_expired(world.db, me)
    assert (again.jobs, again.deliveries) == (0, 0)
    job_events = world.events(EventCode.JOB_LEASE_TAKEN_OVER)
    delivery_events = world.events(EventCode.DELIVERY_LEASE_TAKEN_OVER)
    assert [e.job_id for e in job_events] == [dead[0]] and [e.delivery_id for e in delivery_events] == [dead[1]]
    assert job_events[0].details is not None
    assert {k: job_events[0].details[k] for k in ("from_node", "by_node", "failed")} == \
        {"from_node": OTHER, "by_node": ME, "failed": False}


def test_a_job_taken_over_while_it_ran_is_not_finished_by_its_old_node(world: World) -> None:
    world.series(SeriesState.ROUTED, 0, job=JobState.QUEUED, deliveries=(), files=0)

    def pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
        # this node stalls (GC, network): its lease runs out and another node takes the job over
        with world.db.session() as s:
            s.execute(update(Job).where(Job.id == context.job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        assert take_over_expired(world.db, Identity(OTHER, timedelta(seconds=30))).jobs == 1
        return PipelineOutput([], verdict="done", summary={})

    runner = JobRunner(world.db, Spool(world.settings.spool_dir, 0), Outbox(world.settings.outbox_dir, world.settings),
                       world.settings, pipeline_resolver=lambda name, settings: pipeline)
    job_id = runner.claim()
    assert job_id is not None and _state(world, job_id)[0] == JobState.RUNNING
    runner.run(job_id)
    assert _state(world, job_id)[0] == JobState.QUEUED  # the other node's now: not done by this one
    assert world.events(EventCode.JOB_DONE) == []
    lost = world.events(EventCode.NODE_LEASE_LOST)
    assert [e.job_id for e in lost] == [job_id]


def test_a_node_id_held_by_a_live_node_is_refused(world: World) -> None:
    with world.db.session() as s:
        s.add(NodeRow(node_id=ME, host="elsewhere", pid=1, version="1", engine="auto", ae_title="X", port=1,
                      state="running", last_heartbeat=utcnow()))
    with pytest.raises(NodeIdInUse, match="node id 'node-b' is in use by a live node on elsewhere"):
        register_node(world.db, world.settings)
    assert len(world.events(EventCode.NODE_ID_IN_USE)) == 1
    with world.db.session() as s:  # its heartbeat stops: the id may be taken again
        s.execute(update(NodeRow).values(last_heartbeat=utcnow() - timedelta(minutes=5)))
    register_node(world.db, world.settings)
    with world.db.session() as s:
        row = s.get(NodeRow, ME)
        assert row is not None and row.host != "elsewhere" and row.state == "running"


def test_a_shared_spool_keeps_other_nodes_fresh_temporaries(tmp_path: Path) -> None:
    import os
    import time

    spool = Spool(tmp_path / "spool", 0)
    spool.ensure_writable()
    fresh, stale = tmp_path / "spool" / ".a.dcm.1.2.tmp", tmp_path / "spool" / ".b.dcm.3.4.tmp"
    fresh.write_bytes(b"another node is writing this")
    stale.write_bytes(b"left by a crash")
    old = time.time() - 120
    os.utime(stale, (old, old))
    assert spool.remove_temporaries(older_than_s=30) == 1  # a node starting next to live nodes
    assert fresh.exists() and not stale.exists()
    assert spool.remove_temporaries() == 1 and not fresh.exists()  # one node (SQLite): every one is a crash's


def _attempts(world: World, job_id: int, attempts: int | None = None) -> int:
    with world.db.session() as s:
        if attempts is not None:
            s.execute(update(Job).where(Job.id == job_id).values(attempts=attempts))
        job = s.get(Job, job_id)
        assert job is not None
        return job.attempts


def test_a_job_whose_nodes_keep_dying_is_failed_not_taken_over_for_ever(world: World) -> None:
    """A series that kills the process (out of memory, a native crash) would take down every node in
    turn: after [jobs] max_attempts tries the takeover fails the job, audited."""
    me = Identity(ME, timedelta(seconds=30), max_job_attempts=2)
    first, _ = _held(world, OTHER, -1, delivery=False)
    second, _ = _held(world, OTHER, -1, delivery=False)
    _attempts(world, first, 1)
    _attempts(world, second, 2)
    assert take_over_expired(world.db, me).jobs == 2
    assert _state(world, first)[0] == JobState.QUEUED
    assert _state(world, second)[0] == JobState.FAILED
    with world.db.session() as s:
        job = s.get(Job, second)
        assert job is not None and job.finished_at is not None and f"node {OTHER} died running it" in str(job.error)
    assert [e.job_id for e in world.events(EventCode.JOB_FAILED)] == [second]


def test_startup_fails_a_job_the_node_died_running_max_attempts_times(world: World) -> None:
    once, _ = _held(world, ME, 30, delivery=False)
    twice, _ = _held(world, ME, 30, delivery=False)
    _attempts(world, once, 1)
    _attempts(world, twice, 2)
    assert requeue_own_jobs(world.db, ME, max_attempts=2) == 2
    assert _state(world, once)[0] == JobState.QUEUED and _state(world, twice)[0] == JobState.FAILED
    assert [e.job_id for e in world.events(EventCode.JOB_FAILED)] == [twice]


def test_an_orderly_stop_hands_its_job_back_without_counting_the_attempt(world: World) -> None:
    job_id, _ = _held(world, ME, 30, delivery=False)
    _attempts(world, job_id, 2)
    assert leave(world.db, ME) == (1, 0)
    assert _state(world, job_id)[0] == JobState.QUEUED and _attempts(world, job_id) == 1
