"""The outbox: result objects written durably to disk, one delivery row per object and destination.

Files are named by their (deterministic) SOP Instance UID, so re-processing a series overwrites
the same file and supersedes any delivery of it that has not gone out yet.

A route's `forward_to` sends the source instances themselves through the same delivery rows
(kind "forward"): the file is the spooled one, as received (no copy), so the spool file must stay
until its forwards are delivered (retention reads the delivery states).
"""
from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.config import Settings
from dicomnode.core.durable import confined, make_dirs_durably, write_durably
from dicomnode.core.uids import check_uid
from storage.audit import record_event
from storage.events import EventCode
from storage.models import Delivery, Instance, Job, Series
from storage.states import DeliveryKind, DeliveryState


@dataclass(frozen=True)
class Target:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def encode_file(ds: Dataset) -> bytes:
    """DICOM Part 10 bytes, Explicit VR Little Endian unless the object says otherwise."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class Outbox:
    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings

    def resolve(self, name: str, series: Series) -> Target:
        """A destination name from the config, or 'sender': back to the calling AE's host."""
        if name == "sender":
            for dest_name, dest in self.settings.destinations.items():
                if dest.ae_title == series.calling_ae:
                    return Target(dest_name, dest.ae_title, dest.host, dest.port, dest.tls)
            return Target("sender", series.calling_ae, series.peer_host, self.settings.sender.sender_port)
        dest = self.settings.destinations[name]
        return Target(name, dest.ae_title, dest.host, dest.port, dest.tls)

    def write(self, series_uid: str, ds: Dataset) -> str:
        """Write one result under <outbox>/<series>/<SOP instance>.dcm; both UIDs are checked and
        the path confined to the outbox (the series UID comes from the database, i.e. the network)."""
        check_uid("Series Instance UID", series_uid)
        sop_uid = check_uid("SOP Instance UID of a result", str(ds.SOPInstanceUID))
        relative = f"{series_uid}/{sop_uid}.dcm"
        path = confined(self.root, relative)
        make_dirs_durably(path.parent)
        write_durably(path, encode_file(ds))
        return relative

    def enqueue(self, s: Session, job: Job, series: Series, datasets: list[Dataset]) -> int:
        targets = [self.resolve(name, series) for name in job.destinations]
        count = 0
        for ds in datasets:
            relative = self.write(series.series_instance_uid, ds)
            for target in targets:
                s.execute(
                    update(Delivery)
                    .where(Delivery.sop_instance_uid == str(ds.SOPInstanceUID), Delivery.destination == target.name,
                           Delivery.kind == DeliveryKind.RESULT,
                           Delivery.state.in_((DeliveryState.PENDING, DeliveryState.DEAD)))
                    .values(state=DeliveryState.SUPERSEDED, last_error=f"superseded by job {job.id}")
                )
                delivery = Delivery(
                    job_id=job.id, kind=DeliveryKind.RESULT, series_id=series.id, destination=target.name, ae_title=target.ae_title, host=target.host,
                    port=target.port, tls=target.tls, sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID), path=relative, state=DeliveryState.PENDING,
                )
                s.add(delivery)
                s.flush()
                record_event(s, EventCode.DELIVERY_QUEUED, f"{ds.get('Modality', '')} object to {target}",
                             series_instance_uid=series.series_instance_uid, job_id=job.id, delivery_id=delivery.id)
                count += 1
        return count

    def forward(self, s: Session, series: Series, route_name: str, destinations: list[str]) -> int:
        """Queue the series' source instances (the spool files as received) to each destination, in
        the caller's transaction. An instance already queued or sent to a destination is not queued
        again (a re-opened series forwards only what is new). Returns how many deliveries were added."""
        instances = s.execute(
            select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.path)
            .where(Instance.series_id == series.id).order_by(Instance.instance_number, Instance.id)
        ).all()
        added = 0
        for name in destinations:
            target = self.resolve(name, series)
            queued = set(s.execute(
                select(Delivery.sop_instance_uid)
                .where(Delivery.series_id == series.id, Delivery.kind == DeliveryKind.FORWARD,
                       Delivery.destination == target.name, Delivery.state != DeliveryState.SUPERSEDED)
            ).scalars())
            rows = [Delivery(kind=DeliveryKind.FORWARD, job_id=None, series_id=series.id, destination=target.name,
                             ae_title=target.ae_title, host=target.host, port=target.port, tls=target.tls,
                             sop_instance_uid=uid, sop_class_uid=sop_class, path=path, state=DeliveryState.PENDING)
                    for uid, sop_class, path in instances if uid not in queued]
            if not rows:
                continue
            s.add_all(rows)
            s.flush()
            # one event per series and destination, not one per instance (a CT has hundreds)
            record_event(s, EventCode.FORWARD_QUEUED,
                         f"{len(rows)} source instance(s) forwarded by route {route_name!r} to {target} "
                         f"(deliveries {rows[0].id}-{rows[-1].id})",
                         series_instance_uid=series.series_instance_uid, delivery_id=rows[0].id,
                         details={"destination": target.name, "route": route_name, "instances": len(rows),
                                  "first_delivery": rows[0].id, "last_delivery": rows[-1].id})
            added += len(rows)
        return added
