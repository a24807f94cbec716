"""One received instance: parse the header, store it durably, record it, then say the status.

The order is the promise of docs/architecture.md, "Promises": the success status is returned only
after the file is fsynced in the spool and its row is committed to the audit database. Callers go
through an intake session (dicomnode.receive.intake), which says who sent the instance.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomnode.core.dimse import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS
from dicomnode.core.uids import InvalidUID, check_uid, printable
from dicomnode.receive.commits import AlreadyRecorded, InstanceCommitter
from dicomnode.receive.geometry import orientation_text, slice_position
from dicomnode.receive.lifecycle import SeriesLifecycle, SessionKey
from dicomnode.receive.spool import DiskFull, Spool, SpoolError
from storage.audit import record_event
from storage.db import Database, rows_changed
from storage.events import EventCode
from storage.models import Instance, Series, Study, utcnow

log = logging.getLogger(__name__)

# a row whose file retention removed is no stored copy: the instance is stored again (_restore_removed)
_SELECT_INSTANCE = select(Instance.id).where(Instance.sop_instance_uid == bindparam("uid"), Instance.deleted_at.is_(None))


@dataclass(frozen=True)
class StoreOutcome:
    status: int
    comment: str | None = None
    sop_instance_uid: str | None = None
    duplicate: bool = False
    series_instance_uid: str | None = None  # of an accepted instance: callers need not parse it again


@dataclass(frozen=True)
class Origin:
    """Who sent an instance: the association row (None for a web upload), the calling AE, the peer."""

    association_id: int | None
    calling_ae: str
    peer_host: str


class SeriesStudyConflict(Exception):
    """A SeriesInstanceUID already known under another StudyInstanceUID."""


# attributes that become directory and file names, checked to the UID grammar before any path is built
_UID_ATTRIBUTES = (("SOPClassUID", "SOP Class UID"), ("StudyInstanceUID", "Study Instance UID"),
                   ("SeriesInstanceUID", "Series Instance UID"), ("SOPInstanceUID", "SOP Instance UID"))
_INT_RANGE = (-(2**31), 2**31 - 1)  # IS values are 32-bit; anything else is not a number we keep


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # a value pydicom cannot convert (wrong VR, bad bytes): keep nothing
        return ""
    return str(value if value is not None else "")[:limit]


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    """An IS attribute as an int, or None when absent, multi-valued or out of range (never raises)."""
    try:
        value = int(ds.get(keyword))
    except Exception:
        return None
    return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else None


def _float_or_none(ds: Dataset, keyword: str) -> float | None:
    """A DS attribute as a finite float, or None (never raises)."""
    try:
        value = float(ds.get(keyword))
    except Exception:
        return None
    return value if math.isfinite(value) else None


def _floats_or_none(ds: Dataset, keyword: str, count: int) -> list[float] | None:
    """A multi-valued DS attribute as `count` floats, or None (never raises)."""
    try:
        values = [float(v) for v in ds.get(keyword)]
    except Exception:
        return None
    return values if len(values) == count else None


def geometry_facts(ds: Dataset) -> dict[str, object]:
    """The instance columns completion on evidence reads (dicomnode.receive.geometry), from the header
    already parsed: no second read of the file. None for whatever the header does not say."""
    cosines = _floats_or_none(ds, "ImageOrientationPatient", 6)
    position = _floats_or_none(ds, "ImagePositionPatient", 3)
    return {
        "slice_position_mm": slice_position(position, cosines) if position and cosines else None,
        "orientation": orientation_text(cosines) if cosines else None,
        "images_in_acquisition": _int_or_none(ds, "ImagesInAcquisition"),
        "number_of_frames": _int_or_none(ds, "NumberOfFrames"),
    }


def check_uids(ds: Dataset) -> tuple[str, str, str, str]:
    """(SOP Class, Study, Series, SOP Instance) UIDs, each valid, or InvalidUID naming the first bad one."""
    sop_class, study, series, sop_instance = (check_uid(name, str(ds.get(keyword))) for keyword, name in _UID_ATTRIBUTES)
    return sop_class, study, series, sop_instance


def parse_header(data: bytes) -> Dataset:
    """Read everything but the pixel data; raises ValueError naming what is wrong."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        # values are converted lazily: touch the ones we need while errors still mean "unparseable"
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
        ds.file_meta.get("TransferSyntaxUID")
    except Exception as exc:  # pydicom raises many types on hostile input; all mean the same to a sender
        raise ValueError(f"cannot parse the data set: {printable(str(exc), 200)}") from exc
    if missing:
        raise LookupError(f"missing required attribute(s): {', '.join(missing)}")
    return ds


class Ingestor:
    def __init__(self, db: Database, spool: Spool, lifecycle: SeriesLifecycle,
                 max_instance_bytes: int | None = None) -> None:
        self.db = db
        self.spool = spool
        self.lifecycle = lifecycle
        self.max_instance_bytes = max_instance_bytes
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        # study of each known series: a series never moves to another study
        self._series_study: dict[str, str] = {}
        # SQLite serialises writers anyway; one lock keeps study/series creation race-free within
        # this process (across receiver processes the unique keys decide, see _series_row)
        self._write_lock = threading.Lock()
        self._committer = InstanceCommitter(db)

    def store(self, data: bytes, origin: Origin, session: SessionKey = None) -> StoreOutcome:
        """Store one instance sent by `origin` within the intake session `session`."""
        if self.max_instance_bytes is not None and len(data) > self.max_instance_bytes:
            return self.refuse_too_large(len(data), origin)
        try:
            ds = parse_header(data)
        except LookupError as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_MISSING_UIDS, str(exc), origin, CANNOT_UNDERSTAND)
        except ValueError as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_UNPARSEABLE, str(exc), origin, CANNOT_UNDERSTAND)
        try:
            _, study_uid, series_uid, sop_uid = check_uids(ds)
        except InvalidUID as exc:  # before any path is built: these become directory and file names
            return self._refuse(EventCode.INSTANCE_REJECTED_INVALID_UID, str(exc), origin, CANNOT_UNDERSTAND)
        try:
            relative = self.spool.relative_path(study_uid, series_uid, sop_uid)
        except SpoolError as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_INVALID_UID, str(exc), origin, CANNOT_UNDERSTAND)
        conflict = self._study_conflict(study_uid, series_uid)
        if conflict is not None:
            return self._refuse(EventCode.SERIES_STUDY_CONFLICT, conflict, origin, CANNOT_UNDERSTAND, series_uid)

        # register before writing, so the completion checker cannot close the series under us
        self.lifecycle.instance_arriving(series_uid, session)
        if self._is_duplicate(sop_uid, series_uid, origin):
            return StoreOutcome(SUCCESS, "duplicate ignored", sop_uid, duplicate=True, series_instance_uid=series_uid)
        try:
            self.spool.check_space(len(data))
            self.spool.store(relative, data)
        except DiskFull as exc:
            return self._refuse(EventCode.INSTANCE_REJECTED_DISK_FULL, str(exc), origin, OUT_OF_RESOURCES, series_uid)
        except OSError as exc:
            status = OUT_OF_RESOURCES if exc.errno in (28, 122) else PROCESSING_FAILURE  # ENOSPC, EDQUOT
            return self._refuse(EventCode.INSTANCE_STORE_FAILED, f"cannot write spool file: {exc}", origin, status, series_uid)

        try:
            self._record(ds, relative, len(data), origin, session)
        except SeriesStudyConflict as exc:
            # lost a race with the first instance of the series under another study: drop our copy
            self._remove_unrecorded(relative)
            return self._refuse(EventCode.SERIES_STUDY_CONFLICT, str(exc), origin, CANNOT_UNDERSTAND, series_uid)
        except (IntegrityError, AlreadyRecorded):
            if self._restore_removed(sop_uid, relative, len(data), origin):
                return StoreOutcome(SUCCESS, None, sop_uid, series_instance_uid=series_uid)
            # the same instance raced in on another association (or receiver process): the first
            # row wins, and this copy is counted and audited as any duplicate is
            self._is_duplicate(sop_uid, series_uid, origin)
            return StoreOutcome(SUCCESS, "duplicate ignored", sop_uid, duplicate=True, series_instance_uid=series_uid)
        except Exception as exc:  # the database is the second half of the promise
            log.exception("recording instance %s failed", sop_uid)
            return self._refuse(EventCode.INSTANCE_STORE_FAILED, f"cannot record instance: {exc}", origin, PROCESSING_FAILURE, series_uid)
        return StoreOutcome(SUCCESS, None, sop_uid, series_instance_uid=series_uid)

    def refuse_too_large(self, size: int, origin: Origin) -> StoreOutcome:
        """0xA700 for a data set over node.max_instance_mb (also used by the SCP before it is buffered)."""
        limit = self.max_instance_bytes or 0
        return self._refuse(EventCode.INSTANCE_REJECTED_TOO_LARGE,
                            f"data set too large: over {size} bytes, the limit is {limit // 2**20} MiB (node.max_instance_mb)",
                            origin, OUT_OF_RESOURCES)

    def refuse_no_dataset(self, sop_uid: object, origin: Origin) -> StoreOutcome:
        """0xC000 for a C-STORE request that carried no data set."""
        return self._refuse(EventCode.INSTANCE_REJECTED_NO_DATASET,
                            f"no data set in the C-STORE request for {printable(sop_uid)}", origin, CANNOT_UNDERSTAND)

    def _study_conflict(self, study_uid: str, series_uid: str) -> str | None:
        """Why this instance conflicts with the study its series already belongs to, or None."""
        known = self._series_study.get(series_uid)
        if known is None:
            with self.db.engine.connect() as conn:
                known = conn.execute(
                    select(Study.study_instance_uid).join(Series, Series.study_id == Study.id)
                    .where(Series.series_instance_uid == series_uid)
                ).scalar()
            if known is None:
                return None
            self._series_study[series_uid] = known
        if known == study_uid:
            return None
        return f"series {series_uid} belongs to study {known}, not to study {study_uid}"

    def _remove_unrecorded(self, relative: str) -> None:
        try:
            self.spool.path(relative).unlink(missing_ok=True)
        except OSError:
            log.exception("cannot remove the refused file %s", relative)

    # ------------------------------------------------------------------------------
    # The hot path uses SQLAlchemy Core on one connection: the ORM's per-statement overhead
    # was 40% of the handler's time in profiles. Rare paths (new series, duplicates) use the ORM.
    def _is_duplicate(self, sop_uid: str, series_uid: str, origin: Origin) -> bool:
        with self.db.engine.connect() as conn:
            existing = conn.execute(_SELECT_INSTANCE, {"uid": sop_uid}).scalar()
        if existing is None:
            return False
        with self.db.session() as s:
            s.execute(update(Instance).where(Instance.id == existing).values(duplicates=Instance.duplicates + 1))
            record_event(
                s, EventCode.INSTANCE_DUPLICATE, f"instance {sop_uid} received again; kept the stored copy",
                association_id=origin.association_id, series_instance_uid=series_uid,
            )
        return True

    def _restore_removed(self, sop_uid: str, relative: str, size: int, origin: Origin) -> bool:
        """The instance's file had been removed by retention: its row (the record) holds the new copy."""
        with self.db.session() as s:
            return bool(rows_changed(s, update(Instance).where(Instance.sop_instance_uid == sop_uid,
                                                                  Instance.deleted_at.is_not(None))
                        .values(deleted_at=None, path=relative, size_bytes=size, received_at=utcnow(),
                                association_id=origin.association_id)))

    def _record(self, ds: Dataset, relative: str, size: int, origin: Origin, session: SessionKey) -> None:
        series_uid = str(ds.SeriesInstanceUID)
        with self._write_lock:
            series_id = self._series_ids.get(series_uid)
            created = False
            if series_id is None:
                series_id, created = self._series_row(ds, origin)
            elif self._series_study.get(series_uid) != str(ds.StudyInstanceUID):
                raise SeriesStudyConflict(
                    f"series {series_uid} belongs to study {self._series_study.get(series_uid)}, "
                    f"not to study {ds.StudyInstanceUID}")
            self.lifecycle.instance_recorded(series_id, series_uid, created, origin.association_id, session)
        # outside the lock: rows of concurrent associations share one commit (receive/commits.py),
        # and this returns only once the commit holding ours is done
        self._committer.insert({
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "transfer_syntax_uid": str(ds.file_meta.get("TransferSyntaxUID", "")),
            "series_id": series_id,
            "association_id": origin.association_id,
            "instance_number": _int_or_none(ds, "InstanceNumber"),
            "path": relative,
            "size_bytes": size,
            "received_at": utcnow(),
            "duplicates": 0,
            **geometry_facts(ds),
        })

    def _series_row(self, ds: Dataset, origin: Origin) -> tuple[int, bool]:
        """_find_or_create_series, once more when another receiver process created the study or
        series row at the same moment (its unique key refused ours): then the row is there to find."""
        try:
            with self.db.session() as s:
                return self._find_or_create_series(s, ds, origin)
        except IntegrityError:
            self._study_ids.pop(str(ds.StudyInstanceUID), None)
            with self.db.session() as s:
                return self._find_or_create_series(s, ds, origin)

    def _find_or_create_series(self, s: Session, ds: Dataset, origin: Origin) -> tuple[int, bool]:
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
                    # the identity a prior must match (dicomnode.priors.safety)
                    issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
                    patient_birth_date=_text(ds, "PatientBirthDate", 8),
                )
                s.add(study)
                s.flush()
                study_id = study.id
            self._study_ids[study_uid] = study_id
        found = s.execute(select(Series.id, Series.study_id).where(Series.series_instance_uid == series_uid)).first()
        if found is not None and found.study_id != study_id:
            known = s.execute(select(Study.study_instance_uid).where(Study.id == found.study_id)).scalar()
            self._study_ids.pop(study_uid, None)  # a study row made above is rolled back with this session
            raise SeriesStudyConflict(f"series {series_uid} belongs to study {known}, not to study {study_uid}")
        created = found is None
        if found is not None:
            series_id: int = found.id
        else:
            series = Series(
                series_instance_uid=series_uid,
                study_id=study_id,
                modality=_text(ds, "Modality", 16),
                body_part=_text(ds, "BodyPartExamined", 16),
                series_description=_text(ds, "SeriesDescription", 64),
                series_number=_int_or_none(ds, "SeriesNumber"),
                image_type=_image_type(ds),
                slice_thickness=_float_or_none(ds, "SliceThickness"),
                calling_ae=origin.calling_ae,
                peer_host=origin.peer_host,
            )
            s.add(series)
            s.flush()
            series_id = series.id
            record_event(
                s, EventCode.SERIES_OPENED,
                f"{series.modality} series {series.series_number} {series.series_description!r} from {origin.calling_ae}",
                association_id=origin.association_id, series_instance_uid=series_uid,
            )
        self._series_ids[series_uid] = series_id
        self._series_study[series_uid] = study_uid
        return series_id, created

    def _refuse(
        self, code: EventCode, reason: str, origin: Origin, status: int, series_uid: str | None = None
    ) -> StoreOutcome:
        with self.db.session() as s:
            record_event(s, code, reason, association_id=origin.association_id, series_instance_uid=series_uid,
                         details={"calling_ae": origin.calling_ae, "peer_host": origin.peer_host, "status": f"0x{status:04X}"})
        return StoreOutcome(status, reason[:1024])


def _image_type(ds: Dataset) -> str:
    try:
        value = ds.get("ImageType") or []
        values = [value] if isinstance(value, str) else list(value)
    except Exception:
        return ""
    return "\\".join(str(v) for v in values)[:128]
