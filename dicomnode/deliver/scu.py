"""Admin SCU utilities: C-ECHO and C-STORE of files or folders, with a progress bar."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time

from dicomnode.core import reactor
from dicomnode.core.dicom_address import DicomAddress
from dicomnode.core.dimse import STORED_STATUSES


class ScuError(Exception):
    pass


@dataclass
class SendReport:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _associate(address: DicomAddress, calling_ae: str, timeout: float, contexts: list) -> Association:
    reactor.install()  # pynetdicom's own reactor can drop a response under load: the sender would wait out its timeout
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = contexts
    assoc = ae.associate(address.host, address.port, ae_title=address.ae_title)
    if not assoc.is_established:
        raise ScuError(f"no association with {address}: {'rejected' if assoc.is_rejected else 'peer unreachable or not answering'}")
    return assoc


def echo(address: DicomAddress, calling_ae: str, timeout: float = 10.0) -> int:
    assoc = _associate(address, calling_ae, timeout, [build_context(Verification)])
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise ScuError(f"{address} did not answer the C-ECHO")
    return int(status.Status)


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")))
        elif p.is_file():
            found.append(p)
        else:
            raise ScuError(f"{p} does not exist")
    return found


def _store_header(f: Path) -> tuple[str, str]:
    """(SOP class, transfer syntax) of a file to send, or ValueError saying in our words why it cannot be."""
    try:
        ds = dcmread(f, stop_before_pixels=True)
    except InvalidDicomError:
        raise ValueError("not a DICOM file (no 'DICM' marker after a 128-byte preamble, no file meta information)") from None
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    except (EOFError, ValueError, KeyError, TypeError):
        raise ValueError("a damaged DICOM file (its header ends early or cannot be parsed)") from None
    sop_class, syntax = ds.get("SOPClassUID"), ds.file_meta.get("TransferSyntaxUID")
    if not sop_class or not syntax:
        missing = "SOP Class UID (0008,0016)" if not sop_class else "Transfer Syntax UID (0002,0010)"
        raise ValueError(f"a DICOM file without a {missing}: it cannot be sent with C-STORE")
    return str(sop_class), str(syntax)


def send_files(address: DicomAddress, files: list[Path], calling_ae: str,
               progress: Callable[[Path], None] = lambda p: None, timeout: float = 30.0) -> SendReport:
    report = SendReport()
    headers = []
    for f in files:
        try:
            headers.append((f, *_store_header(f)))
        except ValueError as exc:
            report.skipped.append((str(f), str(exc)))
            progress(f)
    if not headers:
        return report
    pairs = sorted({(c, t) for _, c, t in headers})
    if len(pairs) > 128:
        raise ScuError("more than 128 SOP class/transfer syntax combinations; send in smaller batches")
    assoc = _associate(address, calling_ae, timeout, [build_context(c, [t]) for c, t in pairs])
    try:
        for f, _, _ in headers:
            status = assoc.send_c_store(f)
            code = getattr(status, "Status", None)
            if code in STORED_STATUSES:
                report.sent += 1
            else:
                why = f"status 0x{code:04X} {getattr(status, 'ErrorComment', '')}".strip() if code is not None else "no response"
                report.failed.append((str(f), why))
            progress(f)
            if not assoc.is_established:
                raise ScuError(f"{address} dropped the association after {report.sent} instance(s)")
    finally:
        if assoc.is_established:
            assoc.release()
    return report
