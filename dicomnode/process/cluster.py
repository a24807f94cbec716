"""Several nodes on one database: node identity, heartbeat and leases (docs/architecture.md, "Several nodes").

Each node has a row in `nodes` (id, host, version, engine) whose `last_heartbeat` it renews every
`node.heartbeat_s`. A job or delivery a node claims carries its id (`claimed_by`) and a lease
(`lease_expires_at`), renewed by the same heartbeat. When a node dies its leases run out: another
node's heartbeat puts its running jobs back in the queue and its mid-send deliveries back to pending
(audited JOB_LEASE_TAKEN_OVER / DELIVERY_LEASE_TAKEN_OVER), and ends its open intake sessions. The
takeover is a compare-and-set on the expired lease, so two nodes never both take one row over, and
a job's end is a compare-and-set on its claim (dicomnode.process.jobs), so a node that was presumed
dead and comes back cannot finish a job another node now runs.

Clocks: leases are compared with each node's own clock (UTC); keep the nodes on NTP and lease_s far
above their skew.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.core.loops import PeriodicWorker
from dicomnode.receive.lifecycle import SeriesLifecycle
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Delivery, Job, NodeRow, Series, utcnow
from storage.states import DeliveryState, JobState

log = logging.getLogger(__name__)

# a node's row: running; stopped (orderly); lost (its heartbeat stopped for longer than a lease and
# another node took what it left over); "silent" is shown for a running row with a stale heartbeat
RUNNING, STOPPED, LOST = "running", "stopped", "lost"


class NodeIdInUse(Exception):
    """Another live node (fresh heartbeat) has this node id; the message names it."""


@dataclass(frozen=True)
class Identity:
    node_id: str
    lease: timedelta
    max_job_attempts: int = 2  # [jobs] max_attempts: a job whose nodes keep dying is failed, not taken over for ever

    def lease_end(self) -> datetime:
        return utcnow() + self.lease


def identity_of(settings: Settings) -> Identity:
    return Identity(settings.node.identity(), timedelta(seconds=settings.node.lease_s), settings.jobs.max_attempts)


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_node(db: Database, settings: Settings) -> None:
    """This node's row, state running; refused (NodeIdInUse, audited) while a live node holds the id:
    a fresh heartbeat from another host, or from a process on this host that still exists."""
    me = identity_of(settings)
    host, now = socket.gethostname(), utcnow()
    with db.session() as s:
        row = s.get(NodeRow, me.node_id, with_for_update=True)
        refused = _held_by_live_node(row, me, host, now)
        if refused is not None:
            record_event(s, EventCode.NODE_ID_IN_USE, refused)  # committed before the refusal below
        else:
            if row is None:
                row = NodeRow(node_id=me.node_id)
                s.add(row)
            row.host, row.pid, row.version = host, os.getpid(), __version__[:64]
            row.engine, row.ae_title, row.port = settings.inference.engine, settings.node.ae_title, settings.node.port
            row.state, row.started_at, row.last_heartbeat, row.stopped_at = RUNNING, now, now, None
            record_event(s, EventCode.NODE_JOINED, f"node {me.node_id} on {host} (pid {os.getpid()}), version "
                         f"{__version__}, engine {settings.inference.engine}", details={"node_id": me.node_id, "host": host})
    if refused is not None:
        raise NodeIdInUse(refused)


def _held_by_live_node(row: NodeRow | None, me: Identity, host: str, now: datetime) -> str | None:
    """Why the id is another live node's (its heartbeat within a lease, and not a dead process of
    this host: a node restarted after kill -9 takes its own id back), or None."""
    if row is None or row.state != RUNNING or row.pid == os.getpid():
        return None
    age = (now - _aware(row.last_heartbeat)).total_seconds()
    if age >= me.lease.total_seconds() or (row.host == host and not _pid_alive(row.pid)):
        return None
    return (f"node id {me.node_id!r} is in use by a live node on {row.host} (pid {row.pid}, heartbeat "
            f"{age:.0f} s ago); give this node its own node.node_id")


def _mine(column: InstrumentedAttribute[str | None], node_id: str) -> ColumnElement[bool]:
    """This node's rows, and rows claimed before node ids existed (there was one node then)."""
    return or_(column == node_id, column.is_(None))


def requeue_own_jobs(db: Database, node_id: str, max_attempts: int | None = None) -> int:
    """Start-up: this node's jobs left running by its previous run go back to the queue. Other
    nodes' running jobs are theirs while their leases hold (expired ones: take_over_expired).
    With `max_attempts`, a job already tried that often is failed instead: a series that kills the
    node (out of memory, a native crash) must not take it down again at every restart. Without it (an
    orderly stop hands its jobs back) the interrupted attempt is not counted."""
    with db.session() as s:
        interrupted = s.execute(select(Job.id, Job.attempts, Series.series_instance_uid).join(Series)
                                .where(Job.state == JobState.RUNNING, _mine(Job.claimed_by, node_id))).all()
        for job_id, attempts, series_uid in interrupted:
            released = dict(progress=None, claimed_by=None, lease_expires_at=None)
            if max_attempts is not None and attempts >= max_attempts:
                s.execute(update(Job).where(Job.id == job_id).values(
                    state=JobState.FAILED, finished_at=utcnow(), **released,
                    error=f"the node stopped without finishing it {attempts} time(s) (killed or crashed): not run "
                          "again; `dicomnode reprocess` runs it once more"))
                record_event(s, EventCode.JOB_FAILED, f"failed after {attempts} attempt(s): the node was killed or "
                             "crashed running it each time", series_instance_uid=series_uid, job_id=job_id)
                continue
            counted = attempts if max_attempts is not None else max(attempts - 1, 0)
            s.execute(update(Job).where(Job.id == job_id).values(state=JobState.QUEUED, attempts=counted, **released))
            record_event(s, EventCode.JOB_REQUEUED, "interrupted by a restart; queued again"
                         if max_attempts is not None else "handed back by an orderly stop; queued again",
                         series_instance_uid=series_uid, job_id=job_id)
    return len(interrupted)


def reset_own_deliveries(db: Database, node_id: str) -> int:
    """Start-up: this node's deliveries caught mid-send go back to pending (the peer de-duplicates by UID)."""
    with db.session() as s:
        return rows_changed(s, update(Delivery)
                            .where(Delivery.state == DeliveryState.SENDING, _mine(Delivery.claimed_by, node_id))
                            .values(state=DeliveryState.PENDING, claimed_by=None, lease_expires_at=None))


def renew(db: Database, me: Identity) -> None:
    """The heartbeat: this node's row and every lease it holds, one transaction."""
    now, until = utcnow(), me.lease_end()
    with db.session() as s:
        s.execute(update(NodeRow).where(NodeRow.node_id == me.node_id).values(last_heartbeat=now, state=RUNNING))
        s.execute(update(Job).where(Job.claimed_by == me.node_id, Job.state == JobState.RUNNING)
                  .values(lease_expires_at=until))
        s.execute(update(Delivery).where(Delivery.claimed_by == me.node_id, Delivery.state == DeliveryState.SENDING)
                  .values(lease_expires_at=until))


@dataclass
class Takeover:
    jobs: int = 0
    deliveries: int = 0
    sessions: int = 0
    nodes: list[str] = field(default_factory=list)  # other nodes found dead (now lost)


def take_over_expired(db: Database, me: Identity, lifecycle: SeriesLifecycle | None = None) -> Takeover:
    """Other nodes' running jobs and mid-send deliveries whose lease ran out: back in the queue,
    each audited; and the open intake sessions of nodes whose heartbeat stopped, ended."""
    now, done = utcnow(), Takeover()
    expired = and_(or_(Job.claimed_by != me.node_id, Job.claimed_by.is_(None)), Job.lease_expires_at < now)
    with db.session() as s:
        rows = s.execute(select(Job.id, Job.claimed_by, Job.attempts, Series.series_instance_uid).join(Series)
                         .where(Job.state == JobState.RUNNING, expired)).all()
    for job_id, owner, attempts, series_uid in rows:
        # a job its nodes died running max_attempts times (a series that kills the process: out of
        # memory, a native crash) is failed, or it would take down every node in turn
        given_up = attempts >= me.max_job_attempts
        values = (dict(state=JobState.FAILED, finished_at=now, error=f"node {owner} died running it (attempt "
                       f"{attempts} of {me.max_job_attempts}): not run again; `dicomnode reprocess` runs it once more")
                  if given_up else dict(state=JobState.QUEUED))
        with db.session() as s:
            # compare-and-set on the expired lease: one node takes it over, a renewal in between wins
            if rows_changed(s, update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                                                 Job.claimed_by == owner, Job.lease_expires_at < now)
                            .values(progress=None, claimed_by=None, lease_expires_at=None, **values)):
                record_event(s, EventCode.JOB_LEASE_TAKEN_OVER,
                             f"node {owner}'s lease on the running job expired (node presumed dead); "
                             + (f"failed by node {me.node_id}: its nodes died running it {attempts} time(s)" if given_up
                                else f"queued again by node {me.node_id}"),
                             series_instance_uid=series_uid, job_id=job_id,
                             details={"from_node": owner, "by_node": me.node_id, "attempts": attempts,
                                      "failed": given_up})
                if given_up:
                    record_event(s, EventCode.JOB_FAILED, f"failed after {attempts} attempt(s): node {owner} died "
                                 "running it each time", series_instance_uid=series_uid, job_id=job_id)
                done.jobs += 1
    expired_d = and_(or_(Delivery.claimed_by != me.node_id, Delivery.claimed_by.is_(None)), Delivery.lease_expires_at < now)
    with db.session() as s:
        drows = s.execute(select(Delivery.id, Delivery.claimed_by, Delivery.job_id, Delivery.sop_instance_uid)
                          .where(Delivery.state == DeliveryState.SENDING, expired_d)).all()
    for delivery_id, owner, d_job, sop_uid in drows:
        with db.session() as s:
            if rows_changed(s, update(Delivery).where(Delivery.id == delivery_id, Delivery.state == DeliveryState.SENDING,
                                                      Delivery.claimed_by == owner, Delivery.lease_expires_at < now)
                            .values(state=DeliveryState.PENDING, claimed_by=None, lease_expires_at=None,
                                    next_attempt_at=now)):
                record_event(s, EventCode.DELIVERY_LEASE_TAKEN_OVER,
                             f"node {owner}'s lease on the delivery of {sop_uid} expired mid-send (node presumed dead); "
                             f"pending again, taken over by node {me.node_id}", job_id=d_job, delivery_id=delivery_id,
                             details={"from_node": owner, "by_node": me.node_id})
                done.deliveries += 1
    if lifecycle is not None:
        for dead in claim_lost_nodes(db, me):
            done.sessions += len(lifecycle.sessions_of_dead_node(dead))
            done.nodes.append(dead)
    return done


def claim_lost_nodes(db: Database, me: Identity) -> list[str]:
    """Other nodes that say they run but have not beaten for longer than a lease, now marked lost
    by this node (compare-and-set: one live node handles each) and audited; the caller ends their
    sessions and routes the series they completed but may not have routed."""
    cutoff = utcnow() - me.lease
    with db.session() as s:
        silent = list(s.execute(select(NodeRow.node_id, NodeRow.host).where(
            NodeRow.node_id != me.node_id, NodeRow.state == RUNNING, NodeRow.last_heartbeat < cutoff)).all())
    lost = []
    for node_id, host in silent:
        with db.session() as s:
            if rows_changed(s, update(NodeRow).where(NodeRow.node_id == node_id, NodeRow.state == RUNNING,
                                                     NodeRow.last_heartbeat < cutoff).values(state=LOST)):
                record_event(s, EventCode.NODE_PRESUMED_DEAD,
                             f"node {node_id} on {host} has not beaten for longer than {me.lease.total_seconds():g} s: "
                             f"presumed dead; node {me.node_id} ends its intake sessions and routes waiting series",
                             details={"node_id": node_id, "by_node": me.node_id})
                lost.append(node_id)
    return lost


def leave(db: Database, node_id: str) -> tuple[int, int]:
    """An orderly stop (workers already stopped): what this node still holds goes back to the queue
    at once, for the other nodes, instead of waiting for the lease to run out; the row says stopped."""
    jobs = requeue_own_jobs(db, node_id)
    deliveries = reset_own_deliveries(db, node_id)
    with db.session() as s:
        s.execute(update(NodeRow).where(NodeRow.node_id == node_id).values(state=STOPPED, stopped_at=utcnow()))
    return jobs, deliveries


class Heartbeat(PeriodicWorker):
    """Renews this node's heartbeat and leases, and takes over what dead nodes left; `on_takeover`
    wakes the job workers and the sender when something was taken over."""

    def __init__(self, db: Database, settings: Settings, lifecycle: SeriesLifecycle,
                 on_takeover: Callable[[], None], route_waiting: Callable[[], int]) -> None:
        super().__init__("heartbeat", settings.node.heartbeat_s)
        self.db, self.me, self.lifecycle, self.on_takeover = db, identity_of(settings), lifecycle, on_takeover
        # routes every complete series not yet routed (a dead node may have completed one and died
        # before routing it; the routing row locks make a second routing a no-op)
        self.route_waiting = route_waiting

    def step(self) -> bool:
        renew(self.db, self.me)
        taken = take_over_expired(self.db, self.me, self.lifecycle)
        if taken.nodes:
            self.route_waiting()
        if taken.jobs or taken.deliveries:
            log.warning("took over %d job(s) and %d delivery(ies) of dead nodes", taken.jobs, taken.deliveries)
            self.on_takeover()
        return False
