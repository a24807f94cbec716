"""Prometheus metrics, collected from the audit database at scrape time.

Reading the database instead of instrumenting the hot paths keeps C-STORE and the job workers
untouched, and the numbers survive restarts (they are the audit trail). Each node has its own
CollectorRegistry, so several nodes in one process (tests) do not mix their numbers.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicomnode.web.views import destinations, model_info, spool_free_bytes
from storage.models import Association, Delivery, Instance, Job, Series
from storage.states import AssociationState, DeliveryState, JobState, SeriesState
from storage.queries import AuditFilter, counts_by, nodes

if TYPE_CHECKING:
    from dicomnode.node import Node

# seconds; from a fast loopback send up to an hour-long stuck delivery
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
SERIES_STATES = tuple(SeriesState)
JOB_STATES = tuple(JobState)
DELIVERY_STATES = tuple(DeliveryState)
# job.summary keys a pipeline may fill with per-stage seconds (timings_s of SeriesResult)
INFERENCE_KEYS = ("inference", "detect", "detection", "model")
ENCODING_KEYS = ("encoding", "encode", "results")


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    if (start.tzinfo is None) != (end.tzinfo is None):  # SQLite returns naive UTC
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return max((end - start).total_seconds(), 0.0)


def histogram(name: str, doc: str, samples: dict[str, list[float]], label: str = "stage") -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, values in samples.items():
        buckets = [(str(b) if b != float("inf") else "+Inf", sum(1 for v in values if v <= b)) for b in BUCKETS]
        family.add_metric([key], buckets, sum(values))
    return family


def _timing(summary: Any, keys: Iterable[str]) -> float | None:
    if not isinstance(summary, dict):
        return None
    nested = summary.get("timings_s")
    timings: dict[Any, Any] = nested if isinstance(nested, dict) else summary
    for key in keys:
        value = timings.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


class DatabaseCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        db = self.node.db
        with db.session() as s:
            assoc_states = counts_by(s, Association.state)
            instances, size = s.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))).one()
            assoc_bytes = s.execute(select(func.coalesce(func.sum(Association.bytes_received), 0))).scalar_one()
            series_states = counts_by(s, Series.status)
            completed = s.execute(select(func.count(Series.id)).where(Series.completed_at.is_not(None))).scalar_one()
            job_states = counts_by(s, Job.state)
            delivery_states = counts_by(s, Delivery.state)
            series_times = s.execute(select(Series.first_received_at, Series.completed_at)
                                     .where(Series.completed_at.is_not(None))).all()
            job_times = s.execute(select(Job.queued_at, Job.started_at, Job.finished_at, Job.state, Job.summary)
                                  .where(Job.started_at.is_not(None))).all()
            delivery_times = s.execute(select(Delivery.created_at, Delivery.delivered_at)
                                       .where(Delivery.delivered_at.is_not(None))).all()

        family = CounterMetricFamily("dicomnode_associations", "DICOM associations by final state", labels=["state"])
        for state in sorted(set(assoc_states) | set(AssociationState)):
            family.add_metric([state], assoc_states.get(state, 0))
        yield family
        yield CounterMetricFamily("dicomnode_instances_received", "Instances stored in the spool", value=instances)
        yield CounterMetricFamily("dicomnode_bytes_received", "Bytes of instances stored in the spool", value=size)
        yield CounterMetricFamily("dicomnode_association_bytes", "Bytes received on closed associations", value=assoc_bytes)
        yield CounterMetricFamily("dicomnode_series_completed", "Series that completed at least once", value=completed)
        yield CounterMetricFamily("dicomnode_series_ignored", "Complete series that no route matched",
                                  value=series_states.get(SeriesState.IGNORED, 0))
        yield self._states("dicomnode_series", "Series by status", "status", series_states, SERIES_STATES)
        yield self._states("dicomnode_jobs", "Jobs by state", "state", job_states, JOB_STATES)
        yield GaugeMetricFamily("dicomnode_queue_depth", "Jobs waiting for a worker", value=job_states.get(JobState.QUEUED, 0))
        yield self._states("dicomnode_deliveries", "Result deliveries by state", "state", delivery_states, DELIVERY_STATES)
        yield GaugeMetricFamily("dicomnode_dead_letters", "Deliveries that gave up (retry from the console)",
                                value=delivery_states.get(DeliveryState.DEAD, 0))

        stages: dict[str, list[float]] = {k: [] for k in ("receive_to_complete", "queue_wait", "job", "inference",
                                                          "encoding", "delivery")}
        for first, done in series_times:
            if (v := _seconds(first, done)) is not None:
                stages["receive_to_complete"].append(v)
        for queued, started, finished, state, summary in job_times:
            if (v := _seconds(queued, started)) is not None:
                stages["queue_wait"].append(v)
            if state == JobState.DONE and (v := _seconds(started, finished)) is not None:
                stages["job"].append(v)
                if (t := _timing(summary, INFERENCE_KEYS)) is not None:
                    stages["inference"].append(t)
                if (t := _timing(summary, ENCODING_KEYS)) is not None:
                    stages["encoding"].append(t)
        for created, delivered in delivery_times:
            if (v := _seconds(created, delivered)) is not None:
                stages["delivery"].append(v)
        yield histogram("dicomnode_stage_seconds", "Latency of each stage: receive->complete, queue wait, whole job, "
                        "inference and encoding (as the pipeline reports them), delivery", stages)

        try:
            yield GaugeMetricFamily("dicomnode_spool_free_bytes", "Free disk space of the spool", value=spool_free_bytes(self.node))
        except OSError:
            pass
        yield from destination_families(destinations(self.node))
        info = model_info(self.node)
        model = info["model"] or {}
        model_family = InfoMetricFamily("dicomnode_model", "Model and inference engine in use")
        model_family.add_metric([], {"configured_engine": info["configured_engine"], "mode": info["mode"],
                                     "engine": str(model.get("engine", "")), "name": str(model.get("name", "")),
                                     "version": str(model.get("version", "")),
                                     "pipelines": ",".join(info["pipelines"])})
        yield model_family
        yield from node_families(self.node)
        yield GaugeMetricFamily("dicomnode_model_loaded", "1 when every pipeline that needs the model has loaded it",
                                value=0 if set(info["required"]) - set(info["loaded"]) else 1)

    @staticmethod
    def _states(name: str, doc: str, label: str, counts: dict[str, int], known: tuple[str, ...]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=[label])
        for state in sorted(set(known) | set(counts)):
            family.add_metric([state], counts.get(state, 0))
        return family


def _timestamp(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def destination_families(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """The dashboard's destination health, labelled by destination (timestamps only once they happened)."""
    label = ["destination"]
    pending = GaugeMetricFamily("dicomnode_destination_pending", "Deliveries waiting to go to the destination", labels=label)
    oldest = GaugeMetricFamily("dicomnode_destination_oldest_pending_age_seconds",
                               "Age of the oldest delivery waiting for the destination (0: none waits)", labels=label)
    dead = GaugeMetricFamily("dicomnode_destination_dead_letters", "Deliveries to the destination that gave up",
                             labels=label)
    success = GaugeMetricFamily("dicomnode_destination_last_success_timestamp_seconds",
                                "Unix time of the last delivery or C-ECHO the destination accepted", labels=label)
    failure = GaugeMetricFamily("dicomnode_destination_last_failure_timestamp_seconds",
                                "Unix time of the last failed delivery attempt or C-ECHO", labels=label)
    warning = GaugeMetricFamily("dicomnode_destination_warning", "1 when the last attempt failed or the oldest "
                                "pending delivery is older than web.destination_warn_pending_s", labels=label)
    for row in rows:
        name = [row["destination"]]
        pending.add_metric(name, row["pending"])
        oldest.add_metric(name, row["oldest_pending_age_s"] or 0.0)
        dead.add_metric(name, row["dead"])
        warning.add_metric(name, 1 if row["warning"] else 0)
        if (at := _timestamp(row["last_success_at"])) is not None:
            success.add_metric(name, at)
        if (at := _timestamp(row["last_failure_at"])) is not None:
            failure.add_metric(name, at)
    yield from (pending, oldest, dead, success, failure, warning)


def node_families(node: Node) -> Iterator[Metric]:
    """Every node sharing the database (several nodes: dicomnode.process.cluster), labelled by node id:
    heartbeat age, whether it is up (running, heartbeat within a lease), and the work it holds."""
    with node.db.session() as s:
        rows = nodes(s, AuditFilter(), node.settings.node.lease_s)
    label = ["node_id"]
    age = GaugeMetricFamily("dicomnode_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat", labels=label)
    up = GaugeMetricFamily("dicomnode_node_up", "1 when the node runs and its heartbeat is within node.lease_s",
                           labels=label)
    running = GaugeMetricFamily("dicomnode_node_jobs_running", "Jobs the node runs now (holds a lease on)", labels=label)
    sending = GaugeMetricFamily("dicomnode_node_deliveries_sending", "Deliveries the node is sending now", labels=label)
    for row in rows:
        name = [row["node_id"]]
        age.add_metric(name, row["heartbeat_age_s"])
        up.add_metric(name, 1 if row["state"] == "running" else 0)
        running.add_metric(name, row["jobs_running"])
        sending.add_metric(name, row["deliveries_sending"])
    yield from (age, up, running, sending)


def make_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(node))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
