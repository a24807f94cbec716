"""One received instance: parse the header, store it durably, record it, then say the status.

The order is the promise of DESIGN.md section 3: the success status is returned only after the
file is fsynced in the spool and its row is committed to the audit database.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from dicomnode.series import CompletionTracker
from dicomnode.spool import DiskFull, Spool, SpoolError
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Instance, Series, Study, utcnow

log = logging.getLogger(__name__)

_SELECT_INSTANCE = select(Instance.id).where(Instance.sop_instance_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(Instance.__table__)

# DIMSE C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class StoreOutcome:
    status: int
    comment: str | None = None
    sop_instance_uid: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class Sender:
    association_id: int | None
    calling_ae: str
    peer_host: str


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "")[:limit]


def parse_header(data: bytes) -> Dataset:
    """Read everything but the pixel data; raises ValueError naming what is wrong."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise ValueError(f"cannot parse the data set: {exc}") from exc
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
    if missing:
        raise LookupError(f"missing required attribute(s): {', '.join(missing)}")
    return ds


class Ingestor:
    def __init__(self, db: Database, spool: Spool, tracker: CompletionTracker) -> None:
        self.db = db
        self.spool = spool
        self.tracker = tracker
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        # SQLite serialises writers anyway; one lock keeps study/series creation race-free
        self._write_lock = threading.Lock()

    def store(self, data: bytes, sender: Sender) -> StoreOutcome:
        try:
            ds = parse_header(data)
        except LookupError as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_MISSING_UIDS, str(exc), sender, CANNOT_UNDERSTAND)
        except ValueError as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_UNPARSEABLE, str(exc), sender, CANNOT_UNDERSTAND)

        sop_uid = str(ds.SOPInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)
        try:
            relative = self.spool.relative_path(str(ds.StudyInstanceUID), series_uid, sop_uid)
        except SpoolError as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_UNPARSEABLE, str(exc), sender, CANNOT_UNDERSTAND)

        # register before writing, so the completion checker cannot close the series under us
        known_receiving = self.tracker.instance_arrived(series_uid, sender.association_id)
        if self._is_duplicate(sop_uid, series_uid, sender):
            return StoreOutcome(SUCCESS, "duplicate ignored", sop_uid, duplicate=True)
        try:
            self.spool.check_space(len(data))
            self.spool.store(relative, data)
        except DiskFull as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_DISK_FULL, str(exc), sender, OUT_OF_RESOURCES, series_uid)
        except OSError as exc:
            status = OUT_OF_RESOURCES if exc.errno in (28, 122) else PROCESSING_FAILURE  # ENOSPC, EDQUOT
            return self._refuse(EventCode.INSTANCE_STORE_FAILED, f"cannot write spool file: {exc}", sender, status, series_uid)

        try:
            self._record(ds, relative, len(data), sender, known_receiving)
        except IntegrityError:
            # the same instance raced in on another association: the first row wins
            return StoreOutcome(SUCCESS, "duplicate ignored", sop_uid, duplicate=True)
        except Exception as exc:  # the database is the second half of the promise
            log.exception("recording instance %s failed", sop_uid)
            return self._refuse(EventCode.INSTANCE_STORE_FAILED, f"cannot record instance: {exc}", sender, PROCESSING_FAILURE, series_uid)
        return StoreOutcome(SUCCESS, None, sop_uid)

    # ------------------------------------------------------------------------------
    # The hot path uses SQLAlchemy Core on one connection: the ORM's per-statement overhead
    # was 40% of the handler's time in profiles. Rare paths (new series, duplicates) use the ORM.
    def _is_duplicate(self, sop_uid: str, series_uid: str, sender: Sender) -> bool:
        with self.db.engine.connect() as conn:
            existing = conn.execute(_SELECT_INSTANCE, {"uid": sop_uid}).scalar()
        if existing is None:
            return False
        with self.db.session() as s:
            s.execute(update(Instance).where(Instance.id == existing).values(duplicates=Instance.duplicates + 1))
            record_event(
                s, EventCode.INSTANCE_DUPLICATE, f"instance {sop_uid} received again; kept the stored copy",
                association_id=sender.association_id, series_instance_uid=series_uid,
            )
        return True

    def _record(self, ds: Dataset, relative: str, size: int, sender: Sender, known_receiving: bool) -> None:
        series_uid = str(ds.SeriesInstanceUID)
        with self._write_lock:
            series_id = self._series_ids.get(series_uid)
            created = False
            if series_id is None:
                with self.db.session() as s:
                    series_id, created = self._find_or_create_series(s, ds, sender)
            if not created and not known_receiving:
                # also after a restart, when the cache is cold but the series exists and may be finished
                self._reopen_if_finished(series_id, series_uid, sender)
            number = ds.get("InstanceNumber")
            with self.db.engine.begin() as conn:
                conn.execute(_INSERT_INSTANCE, {
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "sop_class_uid": str(ds.SOPClassUID),
                    "transfer_syntax_uid": str(ds.file_meta.get("TransferSyntaxUID", "")),
                    "series_id": series_id,
                    "association_id": sender.association_id,
                    "instance_number": int(number) if number not in (None, "") else None,
                    "path": relative,
                    "size_bytes": size,
                    "received_at": utcnow(),
                    "duplicates": 0,
                })
        self.tracker.mark_receiving(series_uid)

    def _reopen_if_finished(self, series_id: int, series_uid: str, sender: Sender) -> None:
        with self.db.session() as s:
            reopened = s.execute(
                update(Series)
                .where(Series.id == series_id, Series.status != "receiving")
                .values(status="receiving", status_reason=None, last_released_at=None, completed_at=None)
            ).rowcount
            if reopened:
                record_event(
                    s, EventCode.SERIES_REOPENED, "a new instance arrived after completion; the series will be analysed again",
                    association_id=sender.association_id, series_instance_uid=series_uid,
                )

    def _find_or_create_series(self, s, ds: Dataset, sender: Sender) -> tuple[int, bool]:  # type: ignore[no-untyped-def]
        """The series row's id, and whether this call created it."""
        study_uid = str(ds.StudyInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)
        study_id = self._study_ids.get(study_uid)
        if study_id is None:
            study_id = s.execute(select(Study.id).where(Study.study_instance_uid == study_uid)).scalar()
            if study_id is None:
                study = Study(
                    study_instance_uid=study_uid,
                    patient_id=_text(ds, "PatientID", 64),
                    patient_name=_text(ds, "PatientName", 324),
                    accession_number=_text(ds, "AccessionNumber", 16),
                    study_date=_text(ds, "StudyDate", 8),
                    study_description=_text(ds, "StudyDescription", 64),
                )
                s.add(study)
                s.flush()
                study_id = study.id
            self._study_ids[study_uid] = study_id
        series_id = s.execute(select(Series.id).where(Series.series_instance_uid == series_uid)).scalar()
        created = series_id is None
        if created:
            thickness = ds.get("SliceThickness")
            number = ds.get("SeriesNumber")
            series = Series(
                series_instance_uid=series_uid,
                study_id=study_id,
                modality=_text(ds, "Modality", 16),
                body_part=_text(ds, "BodyPartExamined", 16),
                series_description=_text(ds, "SeriesDescription", 64),
                series_number=int(number) if number not in (None, "") else None,
                image_type="\\".join(str(v) for v in (ds.get("ImageType") or []))[:128],
                slice_thickness=float(thickness) if thickness not in (None, "") else None,
                calling_ae=sender.calling_ae,
                peer_host=sender.peer_host,
            )
            s.add(series)
            s.flush()
            series_id = series.id
            record_event(
                s, EventCode.SERIES_OPENED,
                f"{series.modality} series {series.series_number} {series.series_description!r} from {sender.calling_ae}",
                association_id=sender.association_id, series_instance_uid=series_uid,
            )
        self._series_ids[series_uid] = series_id
        return series_id, created

    def _refuse(
        self, code: EventCode, reason: str, sender: Sender, status: int, series_uid: str | None = None
    ) -> StoreOutcome:
        with self.db.session() as s:
            record_event(s, code, reason, association_id=sender.association_id, series_instance_uid=series_uid,
                         details={"calling_ae": sender.calling_ae, "peer_host": sender.peer_host, "status": f"0x{status:04X}"})
        return StoreOutcome(status, reason[:1024])
