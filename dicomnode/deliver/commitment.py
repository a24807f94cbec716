"""Storage commitment of delivered results (Storage Commitment Push Model as SCU, PS3.4 Annex J).

After the C-STOREs of a group to a destination with `storage_commitment = true`, the sender asks on
the same association (N-ACTION, one Transaction UID for the instances it stored) and keeps the
association open up to [sender] commitment_linger_s for a report on it. Most PACS (Orthanc) report
later on a new association to the node's SCP (dicomnode.receive.commitment_reports). Either way
storage.commitment checks the report and moves each delivery to committed or back to the retry
queue; a report that does not come within [sender] commitment_timeout_s fails the transaction.
The pending transactions are rows, so a restart keeps them.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from dicomnode.config import Settings
from dicomnode.core.commitment import (REQUEST_COMMITMENT, STORAGE_COMMITMENT_INSTANCE,
                                       STORAGE_COMMITMENT_PUSH_MODEL, action_information, answer_report)
from dicomnode.deliver.outbox import Target
from storage.commitment import RetryPolicy, expire_overdue, fail_transaction, open_transaction
from storage.db import Database
from storage.models import Delivery

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    cfg = settings.sender
    return RetryPolicy(cfg.max_attempts, cfg.backoff_initial_s, cfg.backoff_max_s)


class StorageCommitment:
    """The sender's side: which destinations want commitment, the N-ACTION, the report timeout."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.policy = retry_policy(settings)

    def wanted(self, destination: str) -> bool:
        """Whether deliveries to this destination name end committed rather than delivered."""
        dest = self.settings.destinations.get(destination)
        return dest is not None and dest.storage_commitment

    @staticmethod
    def context() -> PresentationContext:
        """Proposed next to the storage contexts: we are the SCU (the default role)."""
        return build_context(STORAGE_COMMITMENT_PUSH_MODEL)

    def handlers(self, target: Target, reported: threading.Event) -> list[tuple]:
        """The report on the association of the N-ACTION: its peer is the destination."""
        def on_report(event: evt.Event) -> tuple[int, Dataset | None]:
            status = answer_report(self.db, self.policy, event.event_type, _event_information(event),
                                   target.ae_title, target.host, same_association=True)
            reported.set()
            return status, None
        return [(evt.EVT_N_EVENT_REPORT, on_report)]

    def request(self, assoc: Association, target: Target, stored: Sequence[Delivery], reported: threading.Event) -> None:
        """Ask the destination to commit the instances stored on this association; a refusal or no
        answer fails them at once (they are retried). Then linger for a report on the association."""
        if not stored:
            return
        uid = str(generate_uid())
        with self.db.session() as s:
            asked = open_transaction(s, [d.id for d in stored], uid)
            refs = [(d.sop_class_uid, d.sop_instance_uid) for d in asked]
        if not refs:
            return
        why = self._send_action(assoc, uid, refs)
        if why is not None:
            with self.db.session() as s:
                fail_transaction(s, uid, why, self.policy)
            return
        linger = self.settings.sender.commitment_linger_s
        if linger > 0:
            reported.wait(linger)

    def _send_action(self, assoc: Association, uid: str, refs: list[tuple[str, str]]) -> str | None:
        """Send the N-ACTION; None when the destination accepted it, else why not."""
        if not assoc.is_established:
            return "the association ended before the N-ACTION"
        if not any(cx.abstract_syntax == STORAGE_COMMITMENT_PUSH_MODEL for cx in assoc.accepted_contexts):
            return "the destination did not accept the Storage Commitment Push Model SOP class (1.2.840.10008.1.20.1)"
        try:
            status, _ = assoc.send_n_action(action_information(uid, refs), REQUEST_COMMITMENT,
                                            STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE)
        except (RuntimeError, ValueError) as exc:  # association lost, or a context pynetdicom will not use
            return f"N-ACTION could not be sent: {exc}"
        code = status.get("Status") if status else None
        if code is None:
            return "no N-ACTION response (timeout or abort)"
        if code != 0x0000:
            return f"N-ACTION refused with status 0x{int(code):04X}"
        return None

    def expire_overdue(self) -> int:
        """Fail (retry) the deliveries whose report is overdue; returns how many."""
        with self.db.session() as s:
            return len(expire_overdue(s, self.settings.sender.commitment_timeout_s, self.policy))


def _event_information(event: evt.Event) -> Dataset | None:
    """The report's Event Information, or None when it cannot be decoded (refused as malformed)."""
    try:
        return event.event_information
    except Exception:  # pynetdicom decodes lazily; a broken data set raises whatever pydicom raises
        log.warning("an N-EVENT-REPORT with an Event Information that cannot be decoded")
        return None
