"""The running node: the one place that wires the stages together (docs/architecture.md, "Flow").

receive (spool, intake, SCP, series lifecycle, completion) -> process (routing, jobs) -> deliver
(outbox, result sender). The web console is started by `dicomnode serve` (dicomnode.cli.serve) on
top of a Node; the node itself knows nothing of it.
"""
from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

from sqlalchemy import select

from dicomnode.atna.exporter import AtnaExporter
from dicomnode.atna.settings_audit import record_settings_changes
from dicomnode.config import Settings
from dicomnode.core.durable import make_dirs_durably
from dicomnode.deliver.outbox import Outbox
from dicomnode.deliver.retry import requeue_for_user
from dicomnode.deliver.sender import DeliveryLoop, ResultSender
from dicomnode.priors.provider import NodePriors
from dicomnode.process.cluster import (Heartbeat, NodeIdInUse, identity_of, leave, register_node, requeue_own_jobs,
                                       take_over_expired)
from dicomnode.process.jobs import JobRunner, JobWorker, enqueue_job
from dicomnode.process.pipelines import known_pipeline
from dicomnode.process.routing import Router
from dicomnode.receive.completion import CompletionChecker
from dicomnode.receive.ingest import Ingestor
from dicomnode.receive.intake import Intake
from dicomnode.receive.lifecycle import SeriesLifecycle
from dicomnode.receive.receivers import ReceiverFailed, ReceiverPool, default_processes
from dicomnode.receive.scp import StorageSCP
from dicomnode.receive.spool import Spool, SpoolError
from dicomnode.retention.executor import Executor as RetentionExecutor
from dicomnode.retention.service import RetentionLoop
from dicomnode.startup import StartupError, open_database
from storage.audit import record_event
from storage.events import EventCode
from storage.models import Series, utcnow
from storage.states import SeriesState

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} on {host} is already in use (another DICOM node or an old instance?)") from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        for route in settings.routes:
            if not known_pipeline(route.pipeline):
                raise StartupError(f"route {route.name!r}: unknown pipeline {route.pipeline!r}")
        check_port_free(settings.node.host, settings.node.port)
        try:
            self.spool = Spool(settings.spool_dir, settings.node.min_free_disk_mb * 2**20)
            self.spool.ensure_writable()
            make_dirs_durably(settings.outbox_dir)
        except (SpoolError, OSError) as exc:
            raise StartupError(str(exc)) from None
        self.db = open_database(settings)
        self.node_id = settings.node.identity()
        try:  # before the receivers: their pid file is keyed by the node id, which must be ours alone
            register_node(self.db, settings)
        except NodeIdInUse as exc:
            raise StartupError(str(exc)) from None
        self.lifecycle = SeriesLifecycle(self.db, settings.series.evidence_grace_seconds, self.node_id)
        # the size cap holds for every way in (C-STORE and uploads share the ingestor)
        self.ingestor = Ingestor(self.db, self.spool, self.lifecycle, settings.node.max_instance_mb * 2**20)
        self.intake = Intake(self.ingestor, self.lifecycle)
        self.outbox = Outbox(settings.outbox_dir, settings)
        # queued work starts at once: routing wakes the job workers, a routed forward or a finished job the sender
        self.router = Router(self.db, settings.routes, enqueue_job, self.outbox.forward,
                             on_job_queued=self._wake_job_workers,
                             on_delivery_queued=lambda: self.sender_loop.wake_up())
        # [priors]: the lung pipeline compares each series with the patient's prior exam (issue 12)
        self.runner = JobRunner(self.db, self.spool, self.outbox, settings,
                                on_delivery_queued=lambda: self.sender_loop.wake_up(),
                                prior_provider=NodePriors(self.db, self.spool, self.intake, settings)
                                if settings.priors.enabled else None)
        self.sender = ResultSender(self.db, settings.outbox_dir, settings)
        # the DICOM receiver: in this process, or node.receive_processes processes behind the port
        self.receive_processes = settings.node.receive_processes or default_processes()
        self.scp: StorageSCP | None = None
        self.receivers: ReceiverPool | None = None
        if self.receive_processes == 1:
            self.scp = StorageSCP(settings, self.db, self.intake)
        else:
            self.receivers = ReceiverPool(settings, self.db, self.lifecycle, self.receive_processes)
        self.checker = CompletionChecker(self.lifecycle, settings.series.stable_seconds,
                                         settings.series.poll_seconds, self.router.on_series_complete)
        self.workers = [JobWorker(self.runner, settings.jobs.poll_seconds, i) for i in range(settings.jobs.workers)]
        self.sender_loop = DeliveryLoop(self.sender, settings.sender.poll_seconds)
        # renews this node's heartbeat and leases; takes over what dead nodes left (several nodes)
        self.heartbeat = Heartbeat(self.db, settings, self.lifecycle, on_takeover=self._wake_after_takeover,
                                   route_waiting=self.route_waiting)
        # deletes only files of finished series; busy: a series an open intake session still carries
        self.retention = RetentionLoop(self.db, settings, self.lifecycle.is_open) if settings.retention.enabled else None
        # tails the events table: started first so the recovery and start events go out too
        self.atna = AtnaExporter(self.db, settings) if settings.atna.enabled else None
        if self.receivers is not None:
            self.receivers.launch()  # last: nothing above may fail after it; they listen at start()

    def recover(self) -> None:
        """Pick up what a crash or restart left behind, then say so in the audit trail."""
        started = utcnow()
        # a shared database means a shared spool: a fresh temporary may be another node's write
        shared = self.db.engine.dialect.name != "sqlite"
        temporaries = self.spool.remove_temporaries(older_than_s=self.settings.node.lease_s if shared else 0.0)
        orphans = self.lifecycle.adopt_orphans(started)
        jobs = requeue_own_jobs(self.db, self.node_id, self.settings.jobs.max_attempts)  # own only; others' are theirs
        deliveries = self.sender.recover()
        taken = take_over_expired(self.db, identity_of(self.settings), self.lifecycle)  # dead nodes' work
        RetentionExecutor(self.db, self.settings).finish_pending()  # removals a crash left half-done
        waiting = self.route_waiting()
        if temporaries or orphans or jobs or deliveries or waiting or taken.jobs or taken.deliveries:
            with self.db.session() as s:
                record_event(s, EventCode.NODE_RECOVERED,
                             f"resumed {orphans} receiving series, {jobs} job(s), {deliveries} delivery(ies), "
                             f"took over {taken.jobs} job(s) and {taken.deliveries} delivery(ies) of dead nodes, "
                             f"{waiting} series awaiting routing; removed {temporaries} partial file(s)")

    def route_waiting(self) -> int:
        """Route every complete series not yet routed (after a restart, or a dead node's); how many."""
        with self.db.session() as s:
            waiting = list(s.execute(select(Series.id).where(Series.status == SeriesState.COMPLETE)).scalars())
        for series_id in waiting:
            self.router.on_series_complete(series_id)
        return len(waiting)

    def _wake_job_workers(self) -> None:
        for worker in self.workers:
            worker.wake_up()

    def _wake_after_takeover(self) -> None:
        self._wake_job_workers()
        self.sender_loop.wake_up()

    def retry_deliveries(self, user: str, client: str, delivery_id: int | None) -> list[int]:
        """Re-queue one delivery (or every dead letter) for a console user, audited, and wake the
        delivery loop so they go now rather than at its next poll."""
        ids = requeue_for_user(self.db, user, client, delivery_id)
        self.sender_loop.wake_up()
        return ids

    def start(self) -> None:
        if self.atna is not None:
            self.atna.start()
        self.recover()
        self.heartbeat.start()
        record_settings_changes(self.db, self.settings)  # a changed config or console user, audited
        if self.scp is not None:
            self.scp.start()
        if self.receivers is not None:
            try:
                self.receivers.start()
            except ReceiverFailed as exc:
                raise StartupError(str(exc)) from None
        self.checker.start()
        for worker in self.workers:
            worker.start()
        self.sender_loop.start()
        if self.retention is not None:
            self.retention.start()
        self.start_services()
        cfg = self.settings.node
        with self.db.session() as s:
            record_event(s, EventCode.NODE_STARTED,
                         f"node {self.node_id}: AE {cfg.ae_title} listening on {cfg.host}:{cfg.port}{' (TLS)' if self.settings.tls.enabled else ''} "
                         f"with {self.receive_processes} receiver process(es); data in {Path(cfg.data_dir).resolve()}")

    def start_services(self) -> None:
        """Hook for what runs on top of the node (the web console, see dicomnode.cli.serve):
        started after the stages, before the node announces that it is up."""

    def stop_services(self) -> None:
        """Hook: stopped after the stages, before the audit database closes."""

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
        if self.receivers is not None:
            self.receivers.stop()
        self.checker.stop()
        for worker in self.workers:
            worker.stop()
        self.sender_loop.stop()
        if self.retention is not None:
            self.retention.stop()
        self.stop_services()
        self.heartbeat.stop()
        # what this node still holds goes to the other nodes now, not when its leases run out
        jobs, deliveries = leave(self.db, self.node_id)
        with self.db.session() as s:
            record_event(s, EventCode.NODE_STOPPED, f"node {self.node_id} stopped"
                         + (f"; {jobs} job(s), {deliveries} delivery(ies) handed back to the queue" if jobs or deliveries else ""))
        if self.atna is not None:  # the stop event too, while the repository answers; else at next start
            self.atna.flush_and_stop(timeout_s=5.0)
        self.db.close()
