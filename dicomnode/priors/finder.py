"""Finding the patient's most recent earlier chest CT: the node's own audit database, then C-FIND.

Own database: a CT series of the same PatientID (and IssuerOfPatientID) in an earlier study within the
lookback that the node already analysed; its findings are cached (storage.queries.analysed_priors).
C-FIND (Study Root): STUDY level (PatientID, IssuerOfPatientID, ModalitiesInStudy CT, StudyDate range),
then SERIES level for the most recent studies, judging each series by the same rules as routing
(dicomnode.process.routing: mismatch, preference_key) with the current series' route.
"""
from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]  # made at import time

from dicomnode.config import PriorPeer, Route
from dicomnode.core import reactor
from dicomnode.core.uids import printable, uid_problem
from dicomnode.priors.safety import PatientIdentity
from dicomnode.process.routing import SeriesFacts, mismatch, preference_key
from storage.queries import analysed_priors

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
# the DIMSE default transfer syntaxes: Implicit, then Explicit VR Little Endian
QR_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
DATABASE = "database"  # PriorCandidate.source of a prior the node already holds and analysed


class PeerError(Exception):
    """A peer could not be asked or refused (unreachable, rejected, failure status, timed out)."""


@dataclass(frozen=True)
class PriorCandidate:
    """One earlier exam that may serve as the prior."""

    source: str  # DATABASE or the AE title of the peer that answered the C-FIND
    study_uid: str
    study_date: str  # YYYYMMDD
    identity: PatientIdentity
    series_uid: str = ""  # "" until a suitable series is chosen
    series_description: str = ""
    modality: str = "CT"
    series_number: int | None = None
    # the routing facts the C-FIND gave (the prior's series row gets them: the instances that arrive
    # into a row made beforehand do not set them)
    body_part: str = ""
    image_type: str = ""  # backslash-separated, as Series.image_type
    slice_thickness: float | None = None
    series_id: int | None = None  # own database: the series row
    job_id: int | None = None  # own database: the job whose findings rows are cached

    def label(self) -> str:
        return f"study {self.study_uid} of {self.study_date} ({self.source})"


@dataclass
class Search:
    """What a search found: the chosen prior (most recent suitable), the others, and what failed."""

    chosen: PriorCandidate | None = None
    others: list[PriorCandidate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # per peer: why it could not be asked


def lookback_window(current_date: date, lookback_years: float) -> tuple[str, str]:
    """(first day allowed, the current day) as YYYYMMDD: a prior is dated from the first, before the second."""
    first = current_date - timedelta(days=round(lookback_years * 365.25))
    return first.strftime("%Y%m%d"), current_date.strftime("%Y%m%d")


def day_before(yyyymmdd: str) -> str:
    """The last day a prior may be dated (the range of a C-FIND is inclusive)."""
    day = parse_da(yyyymmdd)
    return (day - timedelta(days=1)).strftime("%Y%m%d") if day is not None and day > date.min else yyyymmdd


def parse_da(value: str) -> date | None:
    """A DA value (YYYYMMDD, or the old YYYY.MM.DD) as a date; None unless it is eight ASCII digits of a real day (int()
    alone would take "+202" or other scripts' digits)."""
    text = value.strip().replace(".", "")
    if len(text) != 8 or not (text.isascii() and text.isdigit()):
        return None
    try:
        return date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


# -- own database -----------------------------------------------------------------------------------
def find_in_database(s: Any, identity: PatientIdentity, current_study_uid: str, window: tuple[str, str]) -> Search:
    """Analysed earlier CT series of the patient in the node's own audit database (no network)."""
    rows = analysed_priors(s, identity.patient_id, identity.issuer, window[0], window[1], current_study_uid)
    found = [PriorCandidate(
        source=DATABASE, study_uid=r.study_instance_uid, study_date=r.study_date,
        identity=PatientIdentity(r.patient_id, r.issuer_of_patient_id, r.patient_name, r.patient_birth_date),
        series_uid=r.series_instance_uid, series_description=r.series_description, series_id=r.series_id,
        job_id=r.job_id) for r in rows]
    return Search(chosen=found[0] if found else None, others=found[1:])


# -- C-FIND -----------------------------------------------------------------------------------------
def rules_for_priors(route: Route) -> Route:
    """The route's series rules without its calling_ae rule: a prior comes from the peer, not a scanner."""
    return route.model_copy(update={"match": route.match.model_copy(update={"calling_ae": []})})


class PeerQuery:
    """One association to a peer for the C-FINDs of one search; aborted when `timeout_s` runs out."""

    def __init__(self, peer: PriorPeer, calling_ae: str, timeout_s: float, tls: ssl.SSLContext | None) -> None:
        self.peer = peer
        reactor.install()  # pynetdicom's own reactor can drop a C-FIND response under load (dicomnode.core.reactor)
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, QR_TRANSFER_SYNTAXES)
        self._assoc: Association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                                                tls_args=(tls, None) if tls is not None else None)  # type: ignore[arg-type]  # ssl takes None (no SNI)
        if not self._assoc.is_established:
            raise PeerError(f"no association with {peer.ae_title}@{peer.host}:{peer.port}: "
                            f"{'rejected' if self._assoc.is_rejected else 'peer unreachable or not answering'}")
        # a bound on the whole search, whatever the peer does between responses
        self.timed_out = False
        self._watchdog = threading.Timer(timeout_s, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        self.timed_out = True
        self._assoc.abort()

    def find(self, query: Dataset) -> Iterator[Dataset]:
        """The matches of one C-FIND; PeerError on a failure status, an abort or a timeout."""
        for status, identifier in self._assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status or "Status" not in status:
                raise PeerError(f"{self.peer.ae_title}: C-FIND " + (
                    "timed out (priors.query_timeout_s)" if self.timed_out else "got no answer (association aborted or timed out)"))
            code = int(status.Status)
            if code in PENDING:
                if identifier is not None:
                    yield identifier
            elif code != 0x0000:
                comment = error_comment(status)
                raise PeerError(f"{self.peer.ae_title}: C-FIND refused with status 0x{code:04X}{': ' + comment if comment else ''}")

    def close(self) -> None:
        self._watchdog.cancel()
        if self._assoc.is_established:
            self._assoc.release()


def study_query(identity: PatientIdentity, window: tuple[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = identity.patient_id
    ds.IssuerOfPatientID = identity.issuer  # "" (a return key) when the current exam carries none
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.StudyInstanceUID = ""
    ds.StudyDate = f"{window[0]}-{day_before(window[1])}"
    ds.ModalitiesInStudy = "CT"
    ds.StudyDescription = ""
    return ds


def series_query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    for keyword in ("SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
                    "NumberOfSeriesRelatedInstances", "SliceThickness", "ImageType"):
        setattr(ds, keyword, "")
    return ds


def image_query(study_uid: str, series_uid: str) -> Dataset:
    """Instance level, for the facts a peer does not give at series level (slice thickness, image type)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ""
    ds.SliceThickness = ""
    ds.ImageType = ""
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except Exception:
        return None


def _image_type(ds: Dataset) -> list[str]:
    try:
        value = ds.get("ImageType") or []
    except Exception:
        return []
    return [str(v) for v in ([value] if isinstance(value, str) else value) if str(v)]


def _valid_uid(q: PeerQuery, answer: Dataset, keyword: str) -> bool:
    """A C-FIND answer's UID is the peer's word: one outside the UID grammar (PS3.5 9.1) would reach the C-MOVE, the
    database and the report's text, so its answer is left out, and logged."""
    value = _text(answer, keyword)
    problem = uid_problem(value)
    if problem is not None:
        log.warning("prior search: %s answered with an invalid %s %s (%s); that answer is left out",
                    q.peer.ae_title, keyword, printable(value), problem)
    return problem is None


def series_facts(q: PeerQuery, study_uid: str, answer: Dataset) -> SeriesFacts:
    """The routing facts of a series from its C-FIND answer, completed from one instance when needed."""
    thickness, image_type = _number(answer, "SliceThickness"), _image_type(answer)
    if thickness is None or not image_type:
        # read to the end: a C-FIND left half-read would answer the next one on this association
        instances = list(q.find(image_query(study_uid, _text(answer, "SeriesInstanceUID"))))
        if instances:
            thickness = thickness if thickness is not None else _number(instances[0], "SliceThickness")
            image_type = image_type or _image_type(instances[0])
    count = _number(answer, "NumberOfSeriesRelatedInstances")
    return SeriesFacts(modality=_text(answer, "Modality"), body_part=_text(answer, "BodyPartExamined"),
                       image_type=image_type, description=_text(answer, "SeriesDescription"),
                       slice_thickness=thickness, slice_count=int(count) if count is not None else 0, calling_ae="")


def best_series(q: PeerQuery, study: PriorCandidate, route: Route) -> PriorCandidate | None:
    """The series of the study the route would analyse (routing's rules and preference), or None."""
    suitable: list[tuple[SeriesFacts, Dataset]] = []
    for answer in list(q.find(series_query(study.study_uid))):
        if _text(answer, "Modality").upper() != "CT" or not _valid_uid(q, answer, "SeriesInstanceUID"):
            continue
        facts = series_facts(q, study.study_uid, answer)
        if mismatch(route, facts) is None:
            suitable.append((facts, answer))
    if not suitable:
        return None
    facts, answer = min(suitable, key=lambda pair: preference_key(pair[0]))
    number = _number(answer, "SeriesNumber")
    return PriorCandidate(source=study.source, study_uid=study.study_uid, study_date=study.study_date,
                          identity=study.identity, series_uid=_text(answer, "SeriesInstanceUID"),
                          series_description=facts.description, modality=facts.modality,
                          series_number=int(number) if number is not None else None, body_part=facts.body_part,
                          image_type="\\".join(facts.image_type), slice_thickness=facts.slice_thickness)


def find_on_peer(peer: PriorPeer, calling_ae: str, identity: PatientIdentity, current_study_uid: str,
                 window: tuple[str, str], route: Route, timeout_s: float, tls: ssl.SSLContext | None) -> Search:
    """C-FIND the patient's earlier CT studies on one peer, most recent first, and the best series of the
    most recent study that has a suitable one. PeerError when the peer cannot be asked."""
    q = PeerQuery(peer, calling_ae, timeout_s, tls)
    try:
        studies = []
        for answer in q.find(study_query(identity, window)):
            uid, day = _text(answer, "StudyInstanceUID"), _text(answer, "StudyDate").replace(".", "")
            # checked here too: a peer may ignore a matching key it does not support
            if not _valid_uid(q, answer, "StudyInstanceUID") or uid == current_study_uid \
                    or parse_da(day) is None or not (window[0] <= day < window[1]):
                continue
            studies.append(PriorCandidate(source=peer.ae_title, study_uid=uid, study_date=day,
                                          identity=PatientIdentity.of(answer)))
        studies.sort(key=lambda c: c.study_date, reverse=True)
        search = Search()
        for study in studies:
            if search.chosen is None:
                search.chosen = best_series(q, study, route)
                if search.chosen is not None:
                    continue
            search.others.append(study)
        return search
    finally:
        q.close()


def error_comment(status: Dataset) -> str:
    """A failure response's Error Comment, bounded and printable; "" when it has none."""
    raw = str(status.get("ErrorComment", "") or "").strip()
    return printable(raw, 200) if raw else ""
