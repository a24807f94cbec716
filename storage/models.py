"""SQLAlchemy 2.0 ORM tables of the audit database.

One row per association, study, series, instance, job, finding, delivery and audit event.
Timestamps are timezone-aware UTC.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.states import SeriesState


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON, list[Any]: JSON}


class Association(Base):
    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(default=False)
    # an AssociationState
    state: Mapped[str] = mapped_column(String(16), index=True)
    reject_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    ended_at: Mapped[datetime | None]
    instances_received: Mapped[int] = mapped_column(default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    # the receiver process that serves it (dicomnode.receive.receivers): its rows are closed when it dies
    receiver_pid: Mapped[int | None] = mapped_column(Integer, index=True)


class OpenIntake(Base):
    """One series an open intake session carries (dicomnode.receive.lifecycle): shared by the
    receiver processes, so a series never completes while any of them is still receiving it."""
    __tablename__ = "open_intake"
    __table_args__ = (Index("ix_open_intake_session_series", "session_key", "series_instance_uid", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_key: Mapped[str] = mapped_column(String(96))
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    # the process holding the session: a dead one's rows are ended by the node (not orderly)
    pid: Mapped[int] = mapped_column(Integer, index=True)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the node (nodes.node_id) whose process holds it: a node's start-up ends only its own rows
    # (NULL: written before migration 0015, by the one node there was)
    node_id: Mapped[str | None] = mapped_column(String(64), index=True)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    # patient identity a prior must match (dicomnode.priors.safety); NULL on rows from before 0012
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None]
    image_type: Mapped[str] = mapped_column(String(128), default="")
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    # who sent it, for "back to the sender" routes
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(64), default="")
    instance_count: Mapped[int] = mapped_column(default=0)
    # a SeriesState; named `status` (jobs and deliveries say `state`), kept as the schema has it
    status: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING.value, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    route_name: Mapped[str | None] = mapped_column(String(64))
    # bumps each time a late instance re-opens a completed series
    generation: Mapped[int] = mapped_column(default=0)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # completion clock: starts when the last association that carried an instance ends
    last_released_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    # set at release when the geometry evidence held (dicomnode.receive.geometry): the series completes
    # at this time, before the idle timer (last_released_at + stable_seconds); None: the timer decides
    evidence_due_at: Mapped[datetime | None]
    # retention (dicomnode.retention): when the policy last removed the series' source instances /
    # its outbox files (results, forwarded copies); the rows stay, they are the record
    files_deleted_at: Mapped[datetime | None]
    results_deleted_at: Mapped[datetime | None]
    # None: an exam as received; "prior" (SeriesRole.PRIOR): retrieved to compare a follow-up with
    # (dicomnode.priors): routing holds it, it starts no job of its own and is never delivered
    role: Mapped[str | None] = mapped_column(String(16))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), index=True)
    instance_number: Mapped[int | None]
    path: Mapped[str] = mapped_column(Text)  # relative to the spool directory
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    duplicates: Mapped[int] = mapped_column(default=0)
    # geometry facts captured at ingest for completion on evidence; None where the header lacks them
    # (and on rows from before migration 0008, which leaves such series to the idle timer)
    slice_position_mm: Mapped[float | None] = mapped_column(Float)  # ImagePositionPatient . slice normal
    orientation: Mapped[str | None] = mapped_column(String(96))  # ImageOrientationPatient, normalised
    images_in_acquisition: Mapped[int | None]
    number_of_frames: Mapped[int | None]
    # set when retention removed the file (the row stays: it is the record of what was received)
    deleted_at: Mapped[datetime | None]

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    series_generation: Mapped[int] = mapped_column(default=0)
    pipeline: Mapped[str] = mapped_column(String(64))
    route_name: Mapped[str] = mapped_column(String(64), default="")
    destinations: Mapped[list[Any]] = mapped_column(default=list)
    # a JobState
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str | None] = mapped_column(String(32))
    summary: Mapped[dict[str, Any] | None]
    progress: Mapped[str | None] = mapped_column(String(128))
    queued_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # a re-run (`dicomnode reprocess`, the API, the console) names the job whose result it replaces;
    # no foreign key: adding one to a table others reference would make SQLite rebuild it (0005)
    supersedes_job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # leases (migration 0015, several nodes on one database): the node that claimed it and until when
    # the claim holds; its heartbeat renews it, another node takes an expired one over
    claimed_by: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[datetime | None]

    series: Mapped[Series] = relationship()
    findings: Mapped[list[FindingRow]] = relationship(back_populates="job", cascade="all, delete-orphan")


class FindingRow(Base):
    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    index: Mapped[int]
    center_x_mm: Mapped[float] = mapped_column(Float)
    center_y_mm: Mapped[float] = mapped_column(Float)
    center_z_mm: Mapped[float] = mapped_column(Float)
    diameter_mm: Mapped[float] = mapped_column(Float)
    volume_mm3: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)  # detection probability
    # DeepLung DPN + GBM score (was `malignancy`): weights trained on phantoms, not a clinical probability
    model_score: Mapped[float] = mapped_column(Float)
    lung_rads: Mapped[str] = mapped_column(String(4))
    # issue 11 characterisation; NULL on rows recorded before migration 0004 (not known then)
    nodule_type: Mapped[str | None] = mapped_column(String(16))  # solid | part_solid | ground_glass
    calcified: Mapped[bool | None]
    calcification_pattern: Mapped[str | None] = mapped_column(String(16))
    margin: Mapped[str | None] = mapped_column(String(16))  # smooth | lobulated | spiculated
    lung: Mapped[str | None] = mapped_column(String(8))  # right | left
    zone: Mapped[str | None] = mapped_column(String(8))  # upper | middle | lower (approximates the lobe)
    juxtapleural: Mapped[bool | None]
    perifissural: Mapped[bool | None]  # touches a fissure (NULL: recorded before it was checked)
    mean_diameter_mm: Mapped[float | None] = mapped_column(Float)  # the Lung-RADS measurement, 0.1 mm
    long_axis_mm: Mapped[float | None] = mapped_column(Float)
    short_axis_mm: Mapped[float | None] = mapped_column(Float)
    solid_component_mm: Mapped[float | None] = mapped_column(Float)  # part-solid nodules only
    brock_risk: Mapped[float | None] = mapped_column(Float)  # 0..1, Brock (PanCan) full model
    lung_rads_reasons: Mapped[str | None] = mapped_column(Text)  # one reason per line
    note: Mapped[str | None] = mapped_column(Text)  # e.g. "cut by the field of view"
    # an air-filled lumen (migration 0017): thin_walled | thick_walled | multilocular | with_opacity | cavity |
    # thin_walled_in_part (inference.findings.Finding.cyst)
    cyst: Mapped[str | None] = mapped_column(String(24))
    # the airway whose lumen the lesion lies in (migration 0018): segmental_or_proximal | subsegmental
    # (inference.findings.Finding.airway); NULL: in the lung
    airway: Mapped[str | None] = mapped_column(String(24))
    # issue 12: the SR's TID 1500 Tracking UID of this nodule (a matched prior nodule's, reused) and its
    # comparison with the prior exam; NULL when no comparison was made (see job.summary["comparison"])
    tracking_uid: Mapped[str | None] = mapped_column(String(64))
    comparison_status: Mapped[str | None] = mapped_column(String(16))  # new | growing | stable | shrinking
    prior_finding_id: Mapped[int | None] = mapped_column(Integer)  # findings.id of the prior exam's nodule
    prior_mean_diameter_mm: Mapped[float | None] = mapped_column(Float)
    prior_volume_mm3: Mapped[float | None] = mapped_column(Float)
    interval_days: Mapped[int | None]
    volume_change_pct: Mapped[float | None] = mapped_column(Float)
    doubling_time_days: Mapped[float | None] = mapped_column(Float)  # NULL: not growing (or no prior)
    diameter_change_mm: Mapped[float | None] = mapped_column(Float)
    lung_rads_growth: Mapped[bool | None]  # mean diameter grew > 1.5 mm within 12 months
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    row: Mapped[float] = mapped_column(Float)
    column: Mapped[float] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="findings")


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    # a DeliveryKind: "result" (a job's output, path under the outbox) or "forward" (a source
    # instance as received, path under the spool; no job). Retention keeps a spool file while a
    # forward of it is not delivered.
    kind: Mapped[str] = mapped_column(String(16), default="result", server_default="result", index=True)
    # the source series (results and forwards); NULL on rows from before migration 0005 without a job
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int]
    tls: Mapped[bool] = mapped_column(default=False)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the outbox (kind result) or spool (kind forward)
    # a DeliveryState
    state: Mapped[str] = mapped_column(String(32), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None]
    # storage commitment (migration 0009): the transaction the delivery's instance was last asked in,
    # when (the report timeout counts from it), and when the destination confirmed it
    commit_transaction_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    commit_requested_at: Mapped[datetime | None]
    committed_at: Mapped[datetime | None]
    # leases (migration 0015, several nodes on one database): the node that claimed it and until when
    # the claim holds; its heartbeat renews it, another node takes an expired one over
    claimed_by: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[datetime | None]


class NodeRow(Base):
    """One node sharing the database (migration 0015): its identity, and a heartbeat that says it
    is alive; a node whose heartbeat stopped loses its leases to the others."""

    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(32))  # the inference engine setting
    ae_title: Mapped[str] = mapped_column(String(16))
    port: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))  # running | stopped
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]


class RetentionPurge(Base):
    """Retention's write-ahead journal: one row per series and kind of files (source | outbox) it
    decided to remove. Written before any file goes; a restart finishes a row left unfinished."""

    __tablename__ = "retention_purges"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    what: Mapped[str] = mapped_column(String(16))  # source | outbox
    reason: Mapped[str] = mapped_column(String(16))  # age | high_water
    bytes: Mapped[int] = mapped_column(BigInteger)
    file_count: Mapped[int] = mapped_column(Integer)
    # [[path relative to its root, size, mtime_ns], ...]: a file changed since (rewritten by a new
    # job) no longer matches and is kept; emptied when finished
    files: Mapped[list[Any] | None]
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    code: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String(48))
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    association_id: Mapped[int | None] = mapped_column(Integer)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    # indexed: a series' page reads its jobs' and deliveries' events by these ids
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    delivery_id: Mapped[int | None] = mapped_column(Integer, index=True)
    details: Mapped[dict[str, Any] | None]


class PriorRetrieval(Base):
    """One retrieval of a prior series for a follow-up (dicomnode.priors.retrieve): written before the
    C-MOVE/C-GET goes out, so the instances that arrive are known as the prior, and finished with
    how it ended (a PriorRetrievalState) and why."""

    __tablename__ = "prior_retrievals"

    id: Mapped[int] = mapped_column(primary_key=True)
    current_series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    peer: Mapped[str] = mapped_column(String(16))  # AE title of the peer asked
    method: Mapped[str] = mapped_column(String(8))  # c-move | c-get
    message_id: Mapped[int | None]  # of the C-MOVE/C-GET request (the Move Originator Message ID)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    instances: Mapped[int] = mapped_column(default=0)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class User(Base):
    """Web console accounts (password hashes only); config-file users are merged in at start."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A logged-in console session. Only a SHA-256 of the cookie's random id is stored, so a copy of
    the database cannot be replayed as a cookie; logout deletes the row."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    client: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class AtnaCursor(Base):
    """The ATNA exporter's place in the events table (dicomnode.atna): one row. Events with a
    larger id are the persistent queue; the cursor moves only after the repository took them."""

    __tablename__ = "atna_export"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    messages_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SettingsSnapshot(Base):
    """What the settings were at the last start (dicomnode.atna.settings_audit): one row, a digest
    per setting key (never a value), so a changed configuration or user is audited at the next start."""

    __tablename__ = "settings_snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    digests: Mapped[dict[str, Any]]
    taken_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_jobs_state_queued", Job.state, Job.queued_at)
Index("ix_deliveries_due", Delivery.state, Delivery.next_attempt_at)
Index("ix_jobs_lease", Job.state, Job.lease_expires_at)
Index("ix_deliveries_lease", Delivery.state, Delivery.lease_expires_at)
