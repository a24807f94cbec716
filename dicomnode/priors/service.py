"""The prior of one current series, end to end: search, safety, retrieval, marking, audit.

    PriorService(db, spool, intake, settings).obtain(current_series_id) -> PriorOutcome

Never raises for a peer's sake: a peer down, a refusal, a timeout or a patient mismatch is an
outcome ("prior not available: <reason>") the caller analyses and delivers without comparison, within
priors.max_wait_s. Every step is audited (events 520-526). `analyse_prior` queues the one analysis of a
prior series whose findings the comparison reads (rows of `findings` with that job id).
"""
from __future__ import annotations

import base64
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]  # made at import time
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from dicomnode.config import PriorPeer, Route, Settings
from dicomnode.core.dimse import CANNOT_UNDERSTAND
from dicomnode.deliver.sender import client_ssl_context
from dicomnode.priors import finder
from dicomnode.priors.finder import DATABASE, PeerError, PriorCandidate, Search
from dicomnode.priors.retrieve import Retrieval, c_get, c_move
from dicomnode.priors.safety import PatientIdentity, mismatches
from dicomnode.process.jobs import PRIOR_ROUTE, queue_job
from dicomnode.receive.intake import Intake, Origin
from dicomnode.receive.spool import Spool
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Instance, PriorRetrieval, Series, Study, utcnow
from storage.queries import prior_job
from storage.states import PriorRetrievalState, SeriesRole

log = logging.getLogger(__name__)

# a C-STORE answer (PS3.4 C.4.2.1.4): refused, the data set is not what was asked for
NOT_THE_PRIOR = CANNOT_UNDERSTAND


@dataclass
class PriorOutcome:
    """What the caller gets. `status`: "found" (in the node's database, analysed: `job_id` has the
    findings), "retrieved" (in the spool, marked as a prior; `analyse_prior` it), "not_found",
    "not_available" (`reason` says why: peer down, refused, timed out, patient mismatch), "disabled"."""

    status: str
    reason: str = ""
    prior: PriorCandidate | None = None
    series_id: int | None = None  # the prior series row
    job_id: int | None = None  # own database: the job whose findings are cached
    others: list[str] = field(default_factory=list)  # the other earlier studies, "UID (date, where)"
    seconds: float = 0.0
    # "not_available" only: the patient's prior that was found and could not be retrieved (None when none was found,
    # when the peers could not be asked, or when the one found is not the patient's)
    unretrieved: PriorCandidate | None = None

    @property
    def available(self) -> bool:
        return self.status in ("found", "retrieved")

    def summary(self) -> str:
        """One line for the SR and the console: "prior not available: <reason>" when there is none."""
        if self.available and self.prior is not None:
            return f"prior: {self.prior.label()}"
        if self.status == "not_found":
            return "prior not available: no earlier chest CT of the patient found"
        return f"prior not available: {self.reason}"


@dataclass(frozen=True)
class CurrentExam:
    series_id: int
    series_uid: str
    study_uid: str
    study_date: date
    identity: PatientIdentity
    route: Route


class PriorService:
    def __init__(self, db: Database, spool: Spool, intake: Intake, settings: Settings) -> None:
        self.db = db
        self.spool = spool
        self.intake = intake
        self.settings = settings
        self.cfg = settings.priors

    # -- the whole of it -------------------------------------------------------------------------
    def obtain(self, current_series_id: int) -> PriorOutcome:
        """The prior of the current series, or why there is none; bounded by priors.max_wait_s."""
        started = time.monotonic()
        try:
            outcome = self._obtain(current_series_id, started + self.cfg.max_wait_s)
        except Exception as exc:  # whatever went wrong here, the current exam goes on without comparison
            log.exception("looking for the prior of series %s failed", current_series_id)
            outcome = PriorOutcome("not_available", f"the search failed: {printable_error(exc)}")
            with self.db.session() as s:
                record_event(s, EventCode.PRIOR_RETRIEVE_FAILED, f"prior not available: {outcome.reason}",
                             details={"reason": outcome.reason, "series_id": current_series_id})
        outcome.seconds = round(time.monotonic() - started, 3)
        return outcome

    def _obtain(self, current_series_id: int, deadline: float) -> PriorOutcome:
        if not self.cfg.enabled:
            return PriorOutcome("disabled", "priors.enabled is false")
        current = self._current(current_series_id)
        if isinstance(current, str):
            return PriorOutcome("not_available", current)
        window = finder.lookback_window(current.study_date, self.cfg.lookback_years)
        self._event(EventCode.PRIOR_SEARCH, current,
                    f"looking for an earlier chest CT of {current.identity.describe()} dated {window[0]}..{window[1]} "
                    f"(exclusive): own database, then {', '.join(p.ae_title for p in self.cfg.peers) or 'no peers'}",
                    {"window": list(window), "peers": [p.ae_title for p in self.cfg.peers]})
        with self.db.session() as s:
            search = finder.find_in_database(s, current.identity, current.study_uid, window)
        if search.chosen is None:
            search = self._search_peers(current, window, deadline)
        if search.chosen is None:
            if search.errors:
                return self._not_available(current, "; ".join(search.errors), search)
            self._event(EventCode.PRIOR_NOT_FOUND, current, "no earlier chest CT of the patient within the lookback"
                        + (f"; earlier studies without a suitable series: {len(search.others)}" if search.others else ""),
                        {"others": [c.label() for c in search.others]})
            return PriorOutcome("not_found", others=[c.label() for c in search.others])
        return self._use(current, search, deadline)

    def _use(self, current: CurrentExam, search: Search, deadline: float) -> PriorOutcome:
        prior = search.chosen
        assert prior is not None
        others = [c.label() for c in search.others]
        why = mismatches(current.identity, prior.identity)
        if why:
            return self._mismatch(current, prior, why, search)
        self._event(EventCode.PRIOR_FOUND, current,
                    f"prior: {prior.label()}, series {prior.series_uid} {prior.series_description!r}"
                    + (f"; {len(others)} other earlier study(ies) listed" if others else ""),
                    {"study_instance_uid": prior.study_uid, "series_instance_uid": prior.series_uid,
                     "study_date": prior.study_date, "source": prior.source, "job_id": prior.job_id, "others": others})
        if prior.source == DATABASE:
            return PriorOutcome("found", prior=prior, series_id=prior.series_id, job_id=prior.job_id, others=others)
        return self._retrieve(current, prior, search, deadline)

    # -- search ----------------------------------------------------------------------------------
    def _search_peers(self, current: CurrentExam, window: tuple[str, str], deadline: float) -> Search:
        errors: list[str] = []
        others: list[PriorCandidate] = []
        for peer in self.cfg.peers:
            timeout = min(self.cfg.query_timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                errors.append(f"{peer.ae_title}: not asked, priors.max_wait_s ({self.cfg.max_wait_s:g} s) ran out")
                break
            try:
                found = finder.find_on_peer(peer, self.settings.node.ae_title, current.identity, current.study_uid,
                                            window, finder.rules_for_priors(current.route), timeout, self._tls(peer))
            except Exception as exc:  # PeerError; a socket error, a malformed answer: the peer could not be asked
                errors.append(str(exc) if isinstance(exc, PeerError) else
                              f"{peer.ae_title}: C-FIND failed: {printable_error(exc)}")
                self._query_event(current, peer, window, errors[-1])
                continue
            self._query_event(current, peer, window, "")
            others.extend(found.others)
            if found.chosen is not None:
                return Search(found.chosen, others, errors)
        return Search(None, others, errors)

    # -- retrieval -------------------------------------------------------------------------------
    def _retrieve(self, current: CurrentExam, prior: PriorCandidate, search: Search, deadline: float) -> PriorOutcome:
        peer = self._retrieve_peer(prior)
        timeout = min(self.cfg.retrieve_timeout_s, deadline - time.monotonic())
        if timeout <= 0:
            return self._not_available(current, f"priors.max_wait_s ({self.cfg.max_wait_s:g} s) ran out before the "
                                                f"retrieval", search)
        held = self._already_held(prior.series_uid)
        if held is not None:
            return self._verified(current, prior, held, None, False, search, "already in the spool")
        try:
            retrieval_id, series_id, created_study = self._prepare(current, prior, peer)
        except IntegrityError:  # the same prior's rows, made at this moment for another exam of the patient
            return self._not_available(current, f"series {prior.series_uid} is being retrieved for another exam "
                                                "at this moment", search)
        message_id = retrieval_id % 0xFFFF + 1
        refused: list[str] = []
        try:
            if self.cfg.method == "c-get":
                result = self._c_get(current, prior, peer, timeout, message_id, refused)
            else:
                result = c_move(peer, self.settings.node.ae_title, prior.study_uid, prior.series_uid, timeout,
                                message_id, self._tls(peer))
        except Exception as exc:  # a socket error mid-way: the retrieval failed, the node goes on
            result = Retrieval(False, f"{peer.ae_title}: {self.cfg.method.upper()} failed: {printable_error(exc)}")
        if refused:
            return self._refused(current, prior, retrieval_id, series_id, created_study, refused, search)
        if not result.ok:
            self._close(retrieval_id, series_id, created_study, PriorRetrievalState.FAILED, result.reason)
            return self._not_available(current, result.reason, search, retrieval_id)
        return self._verified(current, prior, series_id, retrieval_id, created_study, search, result.reason)

    def _c_get(self, current: CurrentExam, prior: PriorCandidate, peer: PriorPeer, timeout: float,
               message_id: int, refused: list[str]) -> Retrieval:
        """C-GET into the durable intake; an instance of another series or patient is refused unstored."""
        with self.intake.open(Origin(None, peer.ae_title, peer.host)) as session:
            def store(ds: Dataset, data: bytes) -> int:
                why = instance_mismatch(ds, prior.series_uid, current.identity)
                if why:
                    refused.append(why)
                    return NOT_THE_PRIOR
                return session.store(data).status

            return c_get(peer, self.settings.node.ae_title, prior.study_uid, prior.series_uid, timeout, message_id,
                         self._tls(peer), store)

    def _prepare(self, current: CurrentExam, prior: PriorCandidate, peer: PriorPeer) -> tuple[int, int, bool]:
        """Before the retrieval goes out: the retrieval row and the prior's series row (role prior,
        receiving), so the instances that arrive, on the node's SCP or the C-GET association, are its."""
        with self.db.session() as s:
            study = s.execute(select(Study).where(Study.study_instance_uid == prior.study_uid)).scalar_one_or_none()
            created_study = study is None
            if study is None:
                ident = prior.identity
                study = Study(study_instance_uid=prior.study_uid, patient_id=ident.patient_id[:64],
                              patient_name=ident.name[:324], study_date=prior.study_date[:8],
                              issuer_of_patient_id=ident.issuer[:64] or None, patient_birth_date=ident.birth_date[:8] or None)
                s.add(study)
                s.flush()
            series = s.execute(select(Series).where(Series.series_instance_uid == prior.series_uid)).scalar_one_or_none()
            if series is None:
                series = Series(series_instance_uid=prior.series_uid, study_id=study.id, modality=prior.modality[:16],
                                series_description=prior.series_description[:64], series_number=prior.series_number,
                                body_part=prior.body_part[:16], image_type=prior.image_type[:128],
                                slice_thickness=prior.slice_thickness,
                                calling_ae=peer.ae_title, peer_host=peer.host[:64], role=SeriesRole.PRIOR)
                s.add(series)
            else:  # known but its files removed (retention): the retrieval restores them, as a prior
                series.role = SeriesRole.PRIOR
            s.flush()
            row = PriorRetrieval(current_series_id=current.series_id, study_instance_uid=prior.study_uid,
                                 series_instance_uid=prior.series_uid, peer=peer.ae_title, method=self.cfg.method,
                                 state=PriorRetrievalState.PENDING)
            s.add(row)
            s.flush()
            row.message_id = row.id % 0xFFFF + 1
            return row.id, series.id, created_study

    def _verified(self, current: CurrentExam, prior: PriorCandidate, series_id: int, retrieval_id: int | None,
                  created_study: bool, search: Search, how: str) -> PriorOutcome:
        """The instances in the spool are checked too: the peer could have sent another patient's."""
        identities = self._stored_identities(series_id)
        if not identities:
            reason = f"{how}, yet no instance of series {prior.series_uid} arrived in the spool"
            if retrieval_id is not None:
                self._close(retrieval_id, series_id, created_study, PriorRetrievalState.FAILED, reason)
            return self._not_available(current, reason, search, retrieval_id)
        refused = sorted({why for ident in identities for why in mismatches(current.identity, ident)})
        if refused:
            return self._refused(current, prior, retrieval_id, series_id, created_study, refused, search)
        with self.db.session() as s:
            if retrieval_id is not None:
                row = s.get(PriorRetrieval, retrieval_id)
                assert row is not None
                row.state, row.instances, row.finished_at, row.reason = (PriorRetrievalState.RETRIEVED, len(identities),
                                                                         utcnow(), how)
            record_event(s, EventCode.PRIOR_RETRIEVED,
                         f"prior series {prior.series_uid} of {prior.study_date}: {how}; {len(identities)} instance(s) "
                         f"in the spool, marked as a prior", series_instance_uid=current.series_uid,
                         details={"prior_series_instance_uid": prior.series_uid, "prior_series_id": series_id,
                                  "retrieval_id": retrieval_id, "method": self.cfg.method,
                                  "instances": len(identities)})
        return PriorOutcome("retrieved", how, prior, series_id, others=[c.label() for c in search.others])

    # -- endings ---------------------------------------------------------------------------------
    def _mismatch(self, current: CurrentExam, prior: PriorCandidate, why: list[str], search: Search) -> PriorOutcome:
        reason = f"patient mismatch with {prior.label()}: {', '.join(why)}"
        self._event(EventCode.PRIOR_PATIENT_MISMATCH, current, f"{reason}; no comparison",
                    {"prior_study_instance_uid": prior.study_uid, "mismatches": why})
        return PriorOutcome("not_available", reason, others=[c.label() for c in search.others])

    def _refused(self, current: CurrentExam, prior: PriorCandidate, retrieval_id: int | None, series_id: int,
                 created_study: bool, why: list[str], search: Search) -> PriorOutcome:
        """Not the patient's: never compared. What was stored of it stays (held as a prior, never
        analysed for this exam); nothing accepted is lost."""
        reason = f"the retrieved instances of {prior.label()} are not the patient's: {', '.join(sorted(set(why)))}"
        if retrieval_id is not None:
            self._close(retrieval_id, series_id, created_study, PriorRetrievalState.REFUSED, reason)
        self._event(EventCode.PRIOR_PATIENT_MISMATCH, current, f"{reason}; no comparison",
                    {"prior_series_instance_uid": prior.series_uid, "prior_series_id": series_id,
                     "retrieval_id": retrieval_id, "mismatches": sorted(set(why))})
        return PriorOutcome("not_available", reason, others=[c.label() for c in search.others])

    def _close(self, retrieval_id: int, series_id: int, created_study: bool, state: PriorRetrievalState,
               reason: str) -> None:
        """The retrieval row says how it ended and why; a prior series row nothing arrived for goes (it
        held nothing, and would otherwise wait as "receiving" for instances that never come)."""
        with self.db.session() as s:
            row = s.get(PriorRetrieval, retrieval_id)
            assert row is not None
            arrived = s.execute(select(func.count(Instance.id)).where(Instance.series_id == series_id)).scalar_one()
            row.state, row.reason, row.finished_at, row.instances = state, reason, utcnow(), arrived
            if arrived == 0:
                study_id = s.execute(select(Series.study_id).where(Series.id == series_id)).scalar_one()
                s.execute(delete(Series).where(Series.id == series_id))
                others = s.execute(select(func.count(Series.id)).where(Series.study_id == study_id)).scalar_one()
                if created_study and others == 0:
                    s.execute(delete(Study).where(Study.id == study_id))

    def _not_available(self, current: CurrentExam, reason: str, search: Search,
                       retrieval_id: int | None = None) -> PriorOutcome:
        self._event(EventCode.PRIOR_RETRIEVE_FAILED, current, f"prior not available: {reason}; the exam is analysed "
                    "without comparison", {"reason": reason, "retrieval_id": retrieval_id})
        return PriorOutcome("not_available", reason, others=[c.label() for c in search.others],
                            unretrieved=search.chosen)

    # -- helpers ---------------------------------------------------------------------------------
    def _current(self, series_id: int) -> CurrentExam | str:
        """The current exam, or why it cannot be looked up (no StudyDate, no PatientID)."""
        with self.db.session() as s:
            series = s.get(Series, series_id)
            if series is None:
                return f"series {series_id} is not known"
            study = series.study
            path = s.execute(select(Instance.path).where(Instance.series_id == series_id, Instance.deleted_at.is_(None))
                             .limit(1)).scalar()
            route = next((r for r in self.settings.routes if r.name == series.route_name), None) or self.settings.routes[0]
            fallback = PatientIdentity(study.patient_id, study.issuer_of_patient_id or "", study.patient_name,
                                       study.patient_birth_date or "")
            uid, study_uid, day = series.series_instance_uid, study.study_instance_uid, study.study_date
        identity = self._header_identity(path) or fallback
        when = finder.parse_da(day)
        if when is None:
            return f"the current study has no usable StudyDate ({day!r})"
        if not identity.patient_id:
            return "the current exam has no PatientID: its priors cannot be told apart from other patients'"
        return CurrentExam(series_id, uid, study_uid, when, identity, route)

    def _header_identity(self, relative: str | None) -> PatientIdentity | None:
        if relative is None:
            return None
        try:
            return PatientIdentity.of(dcmread(self.spool.path(relative), stop_before_pixels=True))
        except Exception:
            log.warning("cannot read the header of %s for the patient identity", relative)
            return None

    def _stored_identities(self, series_id: int) -> list[PatientIdentity]:
        with self.db.session() as s:
            paths = list(s.execute(select(Instance.path).where(Instance.series_id == series_id,
                                                               Instance.deleted_at.is_(None))).scalars())
        identities = []
        for relative in paths:
            identity = self._header_identity(relative)
            identities.append(identity if identity is not None else PatientIdentity(""))
        return identities

    def _already_held(self, series_uid: str) -> int | None:
        """A series row of the prior whose files are all still in the spool: nothing to retrieve."""
        with self.db.session() as s:
            row = s.execute(select(Series.id).where(Series.series_instance_uid == series_uid)).scalar()
            if row is None:
                return None
            present = s.execute(select(func.count(Instance.id)).where(Instance.series_id == row,
                                                                       Instance.deleted_at.is_(None))).scalar_one()
            removed = s.execute(select(func.count(Instance.id)).where(Instance.series_id == row,
                                                                       Instance.deleted_at.is_not(None))).scalar_one()
        return row if present and not removed else None

    def _retrieve_peer(self, prior: PriorCandidate) -> PriorPeer:
        wanted = self.cfg.retrieve_from or prior.source
        return next(p for p in self.cfg.peers if p.ae_title == wanted)

    def _tls(self, peer: PriorPeer) -> ssl.SSLContext | None:
        return client_ssl_context(self.settings) if peer.tls else None

    def _query_event(self, current: CurrentExam, peer: PriorPeer, window: tuple[str, str], error: str) -> None:
        """The C-FIND sent to a peer, with its study-level identifier (PS3.15 A.5.3.10 Query)."""
        query = encoded_identifier(finder.study_query(current.identity, window))
        self._event(EventCode.PRIOR_QUERY, current,
                    f"C-FIND (Study Root, STUDY) to {peer.ae_title}@{peer.host}:{peer.port}: " + (error or "answered"),
                    {"peer": peer.ae_title, "host": peer.host, "port": peer.port, "ok": not error,
                     "sop_class_uid": str(StudyRootQueryRetrieveInformationModelFind),
                     "query": base64.b64encode(query).decode("ascii"), "transfer_syntax_uid": str(ImplicitVRLittleEndian)})

    def _event(self, code: EventCode, current: CurrentExam, message: str, details: dict[str, object]) -> None:
        with self.db.session() as s:
            record_event(s, code, message, series_instance_uid=current.series_uid, details=details)


def instance_mismatch(ds: Dataset, series_uid: str, identity: PatientIdentity) -> str:
    """Why an instance a peer sent is not the prior asked for ("" when it is)."""
    got = str(ds.get("SeriesInstanceUID", ""))
    if got != series_uid:
        return f"an instance of another series ({got or 'none'}) was sent"
    return ", ".join(mismatches(identity, PatientIdentity.of(ds)))


def encoded_identifier(ds: Dataset) -> bytes:
    """A C-FIND identifier as sent (Implicit VR Little Endian, the DIMSE default)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


def printable_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def analyse_prior(db: Database, series_id: int, pipeline: str = "lung-nodule") -> int:
    """Queue the one analysis of a prior series (no destinations: nothing is delivered) and return its
    job id; a queued, running or done one is returned as is (a prior is analysed at most once). The
    findings the comparison reads are then the `findings` rows with that job id."""
    with db.session() as s:
        existing = prior_job(s, series_id)
        if existing is not None:
            return existing
        series = s.get(Series, series_id)
        if series is None or series.role != SeriesRole.PRIOR:
            raise ValueError(f"series {series_id} is not a prior series")
        return queue_job(s, series, pipeline, PRIOR_ROUTE, [])


def spool_files(db: Database, spool: Spool, series_id: int) -> list[Path]:
    """The prior's files in the spool (for the comparison's reading of the images)."""
    with db.session() as s:
        paths = list(s.execute(select(Instance.path).where(Instance.series_id == series_id,
                                                           Instance.deleted_at.is_(None))).scalars())
    return [spool.path(p) for p in paths]


