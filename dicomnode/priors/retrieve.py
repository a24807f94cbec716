"""Retrieving a prior series: C-MOVE to the node's own AE title, or C-GET.

C-MOVE: the peer sends the instances as C-STOREs to the node's own SCP (dicomnode.receive.scp), which
stores them through the durable intake like any other; the series row the service created beforehand
(series.role = "prior") is what makes them the prior. The peer must know the node's AE title as a move
destination. C-GET: the instances come back as C-STOREs on this association (the SCU takes the SCP role
for the storage contexts); each is checked (the series asked for, the same patient) before it is stored
through the same intake (dicomnode.receive.intake: fsync, dedupe, audit). Both are bounded by a
watchdog that aborts the association when the retrieval's time runs out.
"""
from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time
    CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage,
    StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove)

from dicomnode.config import PriorPeer
from dicomnode.core import reactor
from dicomnode.core.uids import printable
from dicomnode.priors.finder import QR_TRANSFER_SYNTAXES
from dicomnode.receive.negotiation import negotiation_order

__all__ = ["CT_STORAGE", "Retrieval", "StudyRootQueryRetrieveInformationModelFind",
           "StudyRootQueryRetrieveInformationModelGet", "StudyRootQueryRetrieveInformationModelMove", "c_get", "c_move"]

PENDING = (0xFF00, 0xFF01)
DONE_STATUSES = (0x0000, 0xB000)  # success; warning: some sub-operations failed or had warnings
# the storage SOP classes a C-GET of a chest CT series accepts (the SCU is their SCP on its association),
# each offered with the transfer syntaxes the node's Storage SCP accepts, in its order: stored as sent
CT_STORAGE = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
STATUS_MEANINGS = {0xA701: "out of resources (number of matches)", 0xA702: "out of resources (sub-operations)",
                   0xA801: "move destination unknown (the peer does not know this node's AE title)",
                   0xA900: "identifier does not match SOP class", 0xFE00: "cancelled"}


@dataclass
class Retrieval:
    """How a C-MOVE/C-GET ended: `ok` only when every sub-operation succeeded and something came."""

    ok: bool
    reason: str
    completed: int = 0
    failed: int = 0
    warnings: int = 0


def retrieve_identifier(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


class _Watchdog:
    """Aborts the association when the retrieval's time runs out (the peer may stall between responses)."""

    def __init__(self, assoc: Association, timeout_s: float) -> None:
        self.fired = False
        self._assoc = assoc
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._assoc.abort()

    def cancel(self) -> None:
        self._timer.cancel()


def _associate(ae: AE, peer: PriorPeer, timeout_s: float, tls: ssl.SSLContext | None,
               handlers: list[Any] | None = None, roles: list[Any] | None = None) -> Association:
    """`roles`: SCP/SCU role selections to negotiate (a C-GET's storage roles)."""
    reactor.install()  # pynetdicom's own reactor can drop a response under load (dicomnode.core.reactor)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=roles, evt_handlers=handlers,
                         tls_args=(tls, None) if tls is not None else None)  # type: ignore[arg-type]  # ssl takes None (no SNI)
    return assoc


def _no_association(peer: PriorPeer, assoc: Association) -> Retrieval:
    return Retrieval(False, f"no association with {peer.ae_title}@{peer.host}:{peer.port}: "
                            f"{'rejected' if assoc.is_rejected else 'peer unreachable or not answering'}")


def _judge(responses: Any, operation: str, peer: PriorPeer, watchdog: _Watchdog,
           stored_here: Callable[[], int] | None = None) -> Retrieval:
    """Reads the C-MOVE/C-GET responses to the final one and says how the retrieval ended."""
    final: Dataset | None = None
    for status, _identifier in responses:
        if not status or "Status" not in status:
            why = "timed out (priors.retrieve_timeout_s / max_wait_s)" if watchdog.fired else "got no answer (association aborted or timed out)"
            return Retrieval(False, f"{peer.ae_title}: {operation} {why}", completed=stored_here() if stored_here else 0)
        if int(status.Status) not in PENDING:
            final = status
    if final is None:
        return Retrieval(False, f"{peer.ae_title}: {operation} ended without a final response")
    code = int(final.Status)
    counts = {k: int(final.get(f"NumberOf{k.title()}Suboperations", 0) or 0) for k in ("completed", "failed", "warning")}
    completed = stored_here() if stored_here else counts["completed"]
    if code not in DONE_STATUSES:
        comment = error_comment(final)
        meaning = STATUS_MEANINGS.get(code, "failed")
        return Retrieval(False, f"{peer.ae_title}: {operation} refused with status 0x{code:04X} ({meaning})"
                                f"{': ' + comment if comment else ''}", completed, counts["failed"], counts["warning"])
    if counts["failed"]:
        return Retrieval(False, f"{peer.ae_title}: {operation} incomplete: {counts['failed']} instance(s) failed, "
                                f"{completed} arrived", completed, counts["failed"], counts["warning"])
    if completed == 0:
        return Retrieval(False, f"{peer.ae_title}: {operation} matched no instance of the series", 0)
    return Retrieval(True, f"{completed} instance(s) by {operation} from {peer.ae_title}", completed, 0, counts["warning"])


def c_move(peer: PriorPeer, calling_ae: str, study_uid: str, series_uid: str, timeout_s: float,
           message_id: int, tls: ssl.SSLContext | None) -> Retrieval:
    """C-MOVE the series to `calling_ae` (the node's own AE title: the instances arrive on its SCP)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, QR_TRANSFER_SYNTAXES)
    assoc = _associate(ae, peer, timeout_s, tls)
    if not assoc.is_established:
        return _no_association(peer, assoc)
    watchdog = _Watchdog(assoc, timeout_s)
    try:
        responses = assoc.send_c_move(retrieve_identifier(study_uid, series_uid), calling_ae,
                                      StudyRootQueryRetrieveInformationModelMove, msg_id=message_id)
        return _judge(responses, "C-MOVE", peer, watchdog)
    finally:
        watchdog.cancel()
        if assoc.is_established:
            assoc.release()


# (dataset as received, its encoding with file meta) -> the C-STORE status to answer the peer with
StoreInstance = Callable[[Dataset, bytes], int]


def c_get(peer: PriorPeer, calling_ae: str, study_uid: str, series_uid: str, timeout_s: float,
          message_id: int, tls: ssl.SSLContext | None, store: StoreInstance) -> Retrieval:
    """C-GET the series; each instance the peer sends on the association goes to `store`."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, QR_TRANSFER_SYNTAXES)
    for sop_class in CT_STORAGE:
        ae.add_requested_context(sop_class, negotiation_order())
    roles = [build_role(sop_class, scp_role=True) for sop_class in CT_STORAGE]
    stored = [0]

    def on_store(event: Any) -> int:
        status = store(event.dataset, event.encoded_dataset(include_meta=True))
        if status == 0x0000:
            stored[0] += 1
        return status

    assoc = _associate(ae, peer, timeout_s, tls, handlers=[(evt.EVT_C_STORE, on_store)], roles=roles)
    if not assoc.is_established:
        return _no_association(peer, assoc)
    watchdog = _Watchdog(assoc, timeout_s)
    try:
        responses = assoc.send_c_get(retrieve_identifier(study_uid, series_uid),
                                     StudyRootQueryRetrieveInformationModelGet, msg_id=message_id)
        return _judge(responses, "C-GET", peer, watchdog, stored_here=lambda: stored[0])
    finally:
        watchdog.cancel()
        if assoc.is_established:
            assoc.release()


def error_comment(status: Dataset) -> str:
    """A failure response's Error Comment, bounded and printable; "" when it has none."""
    raw = str(status.get("ErrorComment", "") or "").strip()
    return printable(raw, 200) if raw else ""
