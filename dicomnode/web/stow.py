"""DICOMweb in: STOW-RS (PS3.18 10.5), `POST /dicom-web/studies[/{study}]`, into the same intake as C-STORE.

The request is authenticated like the API (token or session; an open loopback console is open)
before a byte of the body is read. The multipart/related body streams through python-multipart
into numbered files under <data_dir>/web-upload (bounded: web.max_upload_mb for the body, which
dicomnode.web.guard also enforces while it streams; node.max_instance_mb per part; web.max_zip_members
parts). Only a body that parsed to its closing boundary is ingested, so a truncated, malformed,
oversized or unauthenticated request stores nothing. Each part then goes through one intake session
(dicomnode.receive.intake): fsynced and recorded before the answer, de-duplicated, audited, and the
session's end starts the completion clock of its series, which are then routed like any other.

The answer is the Store Instances Response Module (PS3.18 Annex I) as application/dicom+json, or
application/dicom+xml (Native DICOM Model, PS3.19) when the Accept header prefers it: 200 when every
instance was stored, 202 when some failed, 409 when none was stored.

A request whose content type is not multipart/related is refused (415) unread: browsers cannot send
that type cross-site without a CORS preflight this server never grants, which is why a session
needs no CSRF token here.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicomnode.core.dimse import SUCCESS
from dicomnode.receive.intake import IntakeSession, Origin, StoreOutcome
from dicomnode.web.auth import Principal, client_host
from dicomnode.web.deps import api_user, get_node
from dicomnode.web.guard import BodyTooLarge
from dicomnode.web.upload import inside, new_upload_dir
from storage.audit import record_event
from storage.events import EventCode

if TYPE_CHECKING:
    from dicomnode.node import Node

STOW_AE = "STOW-RS"  # the calling AE recorded for instances received by STOW-RS (there is no association)
DICOM_TYPE = "application/dicom"
JSON_TYPE = "application/dicom+json"
XML_TYPE = "application/dicom+xml"
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
# PS3.18 Table I.2-2 failure reasons
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
MAX_BOUNDARY = 200
MAX_PART_HEADERS = 8  # header lines per part (python-multipart's own bound on their size applies too)

router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])


class StowRejected(Exception):
    """The whole request is refused (audited as STOW_REJECTED; nothing stored); status is the HTTP answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- the request body ----------------------------------------------------------------------------
@dataclass
class Part:
    path: Path
    content_type: str = ""
    size: int = 0
    too_large: bool = False  # over node.max_instance_mb: its bytes past the limit were not kept


@dataclass
class _Spooler:
    """python-multipart callbacks that write each part to its own file; writes are queued and done
    off the event loop by `flush`."""

    folder: Path
    max_part: int
    max_parts: int
    parts: list[Part] = field(default_factory=list)
    ended: bool = False
    _handle: IO[bytes] | None = None
    _header: list[bytes] = field(default_factory=lambda: [b"", b""])
    _headers: dict[str, str] = field(default_factory=dict)
    _pending: list[tuple[IO[bytes], bytes]] = field(default_factory=list)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise StowRejected(f"more than {self.max_parts} parts in one request (web.max_zip_members)", 413)
        self._headers = {}
        self._header = [b"", b""]

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS:
            raise StowRejected(f"more than {MAX_PART_HEADERS} headers in a part", 400)
        name, value = (x.decode("latin-1").strip() for x in self._header)
        self._headers[name.lower()] = value
        self._header = [b"", b""]

    def headers_finished(self) -> None:
        path = inside(self.folder, self.folder / f"part-{len(self.parts) + 1:06d}")
        self._handle = open(path, "wb")  # noqa: SIM115  # closed in part_end or close()
        media, _ = parse_options_header(self._headers.get("content-type", ""))
        self.parts.append(Part(path, media.decode("latin-1").lower()))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.size > self.max_part:
            part.too_large = True  # keep counting, stop keeping: the part is refused with 0xA700
            return
        if self._handle is not None:
            self._pending.append((self._handle, data[start:end]))

    def part_end(self) -> None:
        if self._handle is not None:
            self._pending.append((self._handle, b""))  # b"": close after the queued writes
            self._handle = None

    def end(self) -> None:
        self.ended = True

    def flush(self) -> None:
        """Blocking: the queued writes (run in a worker thread)."""
        pending, self._pending = self._pending, []
        for handle, chunk in pending:
            if chunk:
                handle.write(chunk)
            else:
                handle.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        for handle, _ in self._pending:
            handle.close()


def request_boundary(content_type: str) -> bytes:
    """The boundary of a `multipart/related; type="application/dicom"` body, or StowRejected (415/400)."""
    media, params = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        raise StowRejected(f"content type {content_type[:100]!r} is not supported: send multipart/related; "
                           f'type="{DICOM_TYPE}" (PS3.18 10.5)', 415)
    kind = params.get(b"type", b"").decode("latin-1").lower()
    if kind and kind != DICOM_TYPE:
        # application/dicom+json or +xml with bulk data parts: metadata-and-bulk-data requests
        raise StowRejected(f'multipart/related; type="{kind[:60]}" is not supported: only type="{DICOM_TYPE}"', 415)
    boundary = params.get(b"boundary", b"")
    # RFC 2046 says at most 70 characters; Orthanc's DICOMweb client sends longer ones, so allow some room
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise StowRejected(f"multipart/related without a boundary parameter (1-{MAX_BOUNDARY} characters)", 400)
    return boundary


async def spool_parts(request: Request, node: Node, folder: Path) -> list[Part]:
    """Stream the body into files under `folder`; StowRejected (400/413) for a body that is not a
    whole multipart message or passes a limit. BodyTooLarge comes from the guard while streaming."""
    boundary = request_boundary(request.headers.get("content-type", ""))
    max_part = node.settings.node.max_instance_mb * 2**20
    spooler = _Spooler(folder, max_part, node.settings.web.max_zip_members)
    parser = MultipartParser(boundary, spooler.callbacks())  # type: ignore[arg-type]  # a plain dict of the callbacks it names
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await run_in_threadpool(spooler.flush)
        parser.finalize()
        await run_in_threadpool(spooler.flush)
    except MultipartParseError as exc:
        raise StowRejected(f"malformed multipart body: {exc}", 400) from None
    except ClientDisconnect:
        raise StowRejected("the client disconnected before the body ended", 400) from None
    finally:
        spooler.close()
    if not spooler.ended:
        raise StowRejected("the multipart body ends before its closing boundary (truncated request)", 400)
    if not spooler.parts:
        raise StowRejected("the multipart body holds no parts: nothing to store", 400)
    return spooler.parts


# -- ingest ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One part's result: stored (a duplicate counts as stored) or failed with a PS3.18 failure reason."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    duplicate: bool = False
    why: str = ""
    series_instance_uid: str = ""


@dataclass(frozen=True)
class _Header:
    sop_class: str
    sop_instance: str
    study: str
    media_class: str  # MediaStorageSOPClassUID of the file meta


def _peek(data: bytes) -> _Header:
    """The UIDs the answer names (empty where unreadable: the ingestor then says why it refuses)."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        meta = ds.file_meta
        sop_class, sop_instance, study = (str(ds.get(k, "") or "")[:64]
                                          for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"))
        return _Header(sop_class, sop_instance, study, str(meta.get("MediaStorageSOPClassUID", "") or "")[:64])
    except Exception:  # hostile bytes raise many types; the ingestor's refusal is the one audited
        return _Header("", "", "", "")


def _failure_reason(status: int) -> int:
    """A C-STORE status from the ingestor as a PS3.18 Table I.2-2 failure reason."""
    if 0xA700 <= status <= 0xA7FF:
        return OUT_OF_RESOURCES
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status == PROCESSING_FAILURE:
        return status
    return PROCESSING_FAILURE


def _refuse_part(node: Node, client: str, header: _Header, index: int, reason: int, why: str) -> Outcome:
    with node.db.session() as s:
        record_event(s, EventCode.STOW_INSTANCE_REFUSED, f"STOW-RS part {index} from {client} refused: {why}",
                     details={"client": client, "part": index, "sop_instance_uid": header.sop_instance,
                              "failure_reason": f"0x{reason:04X}", "why": why[:300]})
    return Outcome(header.sop_class, header.sop_instance, reason, why=why)


def ingest_part(node: Node, session: IntakeSession, part: Part, index: int, study: str | None, client: str) -> Outcome:
    """Store one part through the intake session, unless it is refused first (and audited)."""
    empty = _Header("", "", "", "")
    if part.too_large:
        outcome: StoreOutcome = session.refuse_too_large(part.size)  # audited by the ingestor
        return Outcome("", "", OUT_OF_RESOURCES, why=outcome.comment or "larger than node.max_instance_mb")
    if part.content_type and part.content_type != DICOM_TYPE:
        return _refuse_part(node, client, empty, index, CANNOT_UNDERSTAND,
                            f"part content type {part.content_type[:60]!r} is not {DICOM_TYPE}")
    data = part.path.read_bytes()
    header = _peek(data)
    if study is not None and header.study != study:
        return _refuse_part(node, client, header, index, CANNOT_UNDERSTAND,
                            f"instance of study {header.study or '(unreadable)'} sent to /dicom-web/studies/{study[:64]}")
    if header.media_class and header.sop_class and header.media_class != header.sop_class:
        return _refuse_part(node, client, header, index, DOES_NOT_MATCH_SOP_CLASS,
                            f"file meta says SOP class {header.media_class}, the data set {header.sop_class}")
    outcome = session.store(data)
    if outcome.status != SUCCESS:
        return Outcome(header.sop_class, outcome.sop_instance_uid or header.sop_instance,
                       _failure_reason(outcome.status), why=outcome.comment or f"status 0x{outcome.status:04X}")
    return Outcome(header.sop_class, outcome.sop_instance_uid or header.sop_instance, None, outcome.duplicate,
                   series_instance_uid=outcome.series_instance_uid or "")


def ingest_parts(node: Node, parts: list[Part], study: str | None, client: str, user: str) -> list[Outcome]:
    """Blocking: every part through one intake session, then one STOW_RECEIVED row."""
    with node.intake.open(Origin(None, STOW_AE, client[:64])) as session:
        outcomes = [ingest_part(node, session, part, i, study, client) for i, part in enumerate(parts, 1)]
    stored = sum(1 for o in outcomes if o.failure is None and not o.duplicate)
    duplicates = sum(1 for o in outcomes if o.duplicate)
    failed = [o for o in outcomes if o.failure is not None]
    series = sorted({o.series_instance_uid for o in outcomes if o.series_instance_uid})
    # stored instances per series, as the zip upload records them (the ATNA exporter reads it per study)
    stored_per_series = Counter(o.series_instance_uid for o in outcomes
                                if o.failure is None and not o.duplicate and o.series_instance_uid)
    with node.db.session() as s:
        record_event(s, EventCode.STOW_RECEIVED,
                     f"STOW-RS by {user} from {client}: {stored} instance(s) stored, {duplicates} duplicate(s),"
                     f" {len(failed)} failed", series_instance_uid=series[0] if len(series) == 1 else None,
                     details={"user": user, "client": client, "study": study, "stored": stored,
                              "duplicates": duplicates,
                              "series": dict(sorted(stored_per_series.items())[:50]),
                              "failed": [f"{o.sop_instance_uid or '?'}: 0x{o.failure:04X} {o.why}"[:300]
                                         for o in failed[:50] if o.failure is not None]})
    return outcomes


def record_rejection(node: Node, user: str, client: str, reason: str, status: int) -> None:
    with node.db.session() as s:
        record_event(s, EventCode.STOW_REJECTED, f"STOW-RS request by {user} from {client} refused ({status}): {reason}",
                     details={"user": user, "client": client, "reason": reason[:500], "status": status})


# -- the answer -----------------------------------------------------------------------------------
def response_dataset(outcomes: list[Outcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1). Retrieve URLs are empty (type 2):
    this node serves no WADO-RS."""
    ds = Dataset()
    ds.RetrieveURL = None
    stored, failed = [], []
    for o in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = o.sop_class_uid or None
        item.ReferencedSOPInstanceUID = o.sop_instance_uid or None
        if o.failure is None:
            item.RetrieveURL = None
            stored.append(item)
        else:
            item.FailureReason = o.failure
            failed.append(item)
    if failed:
        ds.FailedSOPSequence = failed
    if stored:
        ds.ReferencedSOPSequence = stored
    return ds


def status_code(outcomes: list[Outcome]) -> int:
    failed = sum(1 for o in outcomes if o.failure is not None)
    return 200 if failed == 0 else 409 if failed == len(outcomes) else 202


def wants_xml(accept: str) -> bool:
    """application/dicom+xml only when the client asks for it and not for JSON first."""
    accept = accept.lower()
    if XML_TYPE not in accept:
        return False
    return JSON_TYPE not in accept or accept.index(XML_TYPE) < accept.index(JSON_TYPE)


def to_xml(ds: Dataset) -> bytes:
    """The Native DICOM Model (PS3.19 A.1) of a data set, from its DICOM JSON model."""
    root = ET.Element("NativeDicomModel", xmlns=NATIVE_DICOM_NS)
    _xml_attributes(root, ds.to_json_dict())
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _xml_attributes(parent: ET.Element, model: dict[str, Any]) -> None:
    for tag in sorted(model):
        element = model[tag]
        attribute = ET.SubElement(parent, "DicomAttribute",
                                  {"tag": tag, "vr": element["vr"], "keyword": keyword_for_tag(int(tag, 16))})
        for number, value in enumerate(element.get("Value", []), 1):
            if element["vr"] == "SQ":
                _xml_attributes(ET.SubElement(attribute, "Item", number=str(number)), value)
            else:
                ET.SubElement(attribute, "Value", number=str(number)).text = str(value)


def answer(outcomes: list[Outcome], accept: str) -> Response:
    ds = response_dataset(outcomes)
    if wants_xml(accept):
        return Response(to_xml(ds), status_code=status_code(outcomes), media_type=XML_TYPE)
    return JSONResponse(ds.to_json_dict(), status_code=status_code(outcomes), media_type=JSON_TYPE)


# -- the routes -------------------------------------------------------------------------------------
async def receive_stow(request: Request, user: Principal, node: Node, study: str | None) -> Response:
    client = client_host(request)
    try:
        declared = int(request.headers.get("content-length", "0") or 0)
    except ValueError:
        declared = 0
    folder: Path | None = None
    try:
        limit = node.settings.web.max_upload_mb * 2**20
        if declared > limit:
            raise StowRejected(f"{declared} bytes declared, over the limit of {limit >> 20} MB (web.max_upload_mb)", 413)
        request_boundary(request.headers.get("content-type", ""))  # 415 before a byte is read
        folder = await run_in_threadpool(new_upload_dir, node)
        parts = await spool_parts(request, node, folder)
        outcomes = await run_in_threadpool(ingest_parts, node, parts, study, client, user.name)
    except (StowRejected, BodyTooLarge) as exc:
        status, reason = (exc.status, str(exc)) if isinstance(exc, StowRejected) else \
            (413, f"{exc.detail} (web.max_upload_mb)")
        await run_in_threadpool(record_rejection, node, user.name, client, reason, status)
        return JSONResponse({"detail": f"STOW-RS request refused: {reason}"}, status_code=status)
    finally:
        if folder is not None:
            await run_in_threadpool(shutil.rmtree, folder, True)
    return answer(outcomes, request.headers.get("accept", ""))


@router.post("/studies", summary="STOW-RS: store instances (multipart/related; type=\"application/dicom\")")
async def store_instances(request: Request, user: Principal = Depends(api_user),
                          node: Node = Depends(get_node)) -> Response:
    return await receive_stow(request, user, node, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study (others fail with 0xC000)")
async def store_study_instances(study: str, request: Request, user: Principal = Depends(api_user),
                                node: Node = Depends(get_node)) -> Response:
    return await receive_stow(request, user, node, study)
