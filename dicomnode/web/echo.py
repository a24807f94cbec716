"""C-ECHO a configured destination from the console, audited as DESTINATION_ECHO with the result."""
from __future__ import annotations

from dataclasses import dataclass, replace

from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from dicomnode.config import Settings
from dicomnode.core import reactor
from dicomnode.deliver.sender import client_ssl_context
from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode


class UnknownDestination(LookupError):
    pass


@dataclass(frozen=True)
class EchoResult:
    destination: str
    address: str
    ok: bool
    detail: str  # "status 0x0000" or why there was no answer
    event_id: int | None = None  # its DESTINATION_ECHO audit row


def _echo(settings: Settings, name: str) -> EchoResult:
    dest = settings.destinations[name]
    if dest.type == "dicomweb":  # no AE to C-ECHO: say so rather than fail against the web port
        return EchoResult(name, str(dest.url), False, "a DICOMweb (STOW-RS) destination: C-ECHO does not apply")
    address = f"{dest.ae_title}@{dest.host}:{dest.port}"
    # the node's own title and TLS settings: the same association the sender opens, so the answer means
    # the results would go through
    reactor.install()  # pynetdicom's own reactor can drop the C-ECHO response under load (dicomnode.core.reactor)
    ae = AE(ae_title=settings.node.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.sender.connect_timeout_s
    ae.requested_contexts = [build_context(Verification)]
    tls_args = (client_ssl_context(settings), None) if dest.tls else None
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             tls_args=tls_args)  # type: ignore[arg-type]  # ssl takes None (no SNI)
    except Exception as exc:  # DNS failures, refused TLS handshakes: the admin reads why
        return EchoResult(name, address, False, f"cannot connect: {exc}")
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
        return EchoResult(name, address, False, why)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return EchoResult(name, address, False, "no answer to the C-ECHO (timeout or abort)")
    return EchoResult(name, address, int(code) == 0, f"status 0x{int(code):04X}")


def echo_destination(settings: Settings, db: Database, name: str, user: str, client: str) -> EchoResult:
    """C-ECHO the destination `name` for a console user and audit the outcome."""
    if name not in settings.destinations:
        known = ", ".join(sorted(settings.destinations)) or "none configured"
        raise UnknownDestination(f"no destination {name!r} in [destinations] (known: {known})")
    result = _echo(settings, name)
    outcome = "answered" if result.ok else "failed"
    with db.session() as s:
        row = record_event(s, EventCode.DESTINATION_ECHO,
                     f"C-ECHO to {name} ({result.address}) by {user} from {client} {outcome}: {result.detail}",
                     details={"destination": name, "ok": result.ok, "detail": result.detail, "user": user,
                              "client": client, "address": result.address})
        s.flush()  # the row's id, for the page that shows the result
        return replace(result, event_id=row.id)
