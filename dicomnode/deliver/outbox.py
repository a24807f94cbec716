"""The outbox: result objects written durably to disk, one delivery row per object and destination.

Files are named by their (deterministic) SOP Instance UID, so re-processing a series overwrites
the same file and supersedes any delivery of it that has not gone out yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import update
from sqlalchemy.orm import Session

from dicomnode.config import Settings
from dicomnode.core.durable import confined, make_dirs_durably, write_durably
from dicomnode.core.uids import check_uid
from storage.audit import record_event
from storage.events import EventCode
from storage.models import Delivery, Job, Series
from storage.states import DeliveryState


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
                           Delivery.state.in_((DeliveryState.PENDING, DeliveryState.DEAD)))
                    .values(state=DeliveryState.SUPERSEDED, last_error=f"superseded by job {job.id}")
                )
                delivery = Delivery(
                    job_id=job.id, destination=target.name, ae_title=target.ae_title, host=target.host,
                    port=target.port, tls=target.tls, sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID), path=relative, state=DeliveryState.PENDING,
                )
                s.add(delivery)
                s.flush()
                record_event(s, EventCode.DELIVERY_QUEUED, f"{ds.get('Modality', '')} object to {target}",
                             series_instance_uid=series.series_instance_uid, job_id=job.id, delivery_id=delivery.id)
                count += 1
        return count
