"""Storage commitment reports that a PACS sends on a new association to the node's SCP (Orthanc does
so; PS3.4 J.3.3 allows it). The association requestor is the PACS, in the SCP role of the Storage
Commitment Push Model; it sends one N-EVENT-REPORT per transaction, which dicomnode.core.commitment
checks against the delivery rows (storage.commitment). The sender's side is dicomnode.deliver.commitment.
"""
from __future__ import annotations

import time

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicomnode.config import Settings
from dicomnode.core.commitment import STORAGE_COMMITMENT_PUSH_MODEL, answer_report
from dicomnode.core.dimse import PROCESSING_FAILURE
from storage.commitment import RetryPolicy
from storage.db import Database

# how long a report waits for its association to be established (the acceptor's EVT_ACCEPTED
# handlers write an audit row, which can queue behind other writers on the database)
ESTABLISHED_WAIT_S = 30.0


class CommitmentReports:
    """The SCP's EVT_N_EVENT_REPORT handler; the rows decide, so any node process can take a report."""

    def __init__(self, settings: Settings, db: Database) -> None:
        cfg = settings.sender
        self.db = db
        self.policy = RetryPolicy(cfg.max_attempts, cfg.backoff_initial_s, cfg.backoff_max_s)

    @staticmethod
    def accept_context(ae: AE, transfer_syntaxes: list[str]) -> None:
        """Accept the Push Model with the requestor as SCP (SCP/SCU Role Selection, PS3.7 D.3.3.4), as
        a report's sender proposes it; we never act as its SCP (an N-ACTION to us is answered with a
        failure by pynetdicom, no handler is bound)."""
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, transfer_syntaxes, scu_role=False, scp_role=True)

    def handler(self) -> tuple:
        return (evt.EVT_N_EVENT_REPORT, self.on_report)

    def on_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        if not wait_until_established(event.assoc, ESTABLISHED_WAIT_S):
            return PROCESSING_FAILURE, None  # its response cannot go out: judge nothing, the PACS reports again
        rq = event.assoc.requestor
        calling = str(rq.ae_title).strip()[:16]
        try:
            info = event.event_information
        except Exception:  # pynetdicom decodes lazily; a broken data set raises whatever pydicom raises
            info = None
        status = answer_report(self.db, self.policy, event.event_type, info, calling, str(rq.address),
                               same_association=False)
        return status, None


def wait_until_established(assoc: Association, timeout_s: float) -> bool:
    """Whether the association is (or becomes, within timeout_s) established.

    pynetdicom serves an N-EVENT-REPORT in a thread of its own as soon as its DUL has decoded it
    (dimse.receive_primitive), which can be while the acceptor still runs its EVT_ACCEPTED handlers,
    before it marks the association established; its service class then drops the response of a
    handler that returned by then (service_class._n_event_report_scp: `not assoc.is_established`)
    and the PACS waits for an answer that never comes. A report sent right after the A-ASSOCIATE-AC
    met this on a freshly started receiver."""
    deadline = time.monotonic() + timeout_s
    while not assoc.is_established:
        if assoc.is_aborted or assoc.is_released or assoc.is_rejected or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True
