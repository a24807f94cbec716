"""Storage Commitment Push Model (PS3.4 Annex J) messages: the N-ACTION request we send and the
N-EVENT-REPORT we read, on either association (the sender's, or a new one the PACS opens to the
node's SCP). The database side is storage.commitment."""
from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from storage.commitment import REPORT_REFUSED, CommitmentReport, RetryPolicy, refuse_report, settle_report
from storage.db import Database

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
# the well-known SOP Instance of the Push Model (PS3.4 J.3.5): Requested / Affected SOP Instance UID
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # Action Type ID of "Request Storage Commitment"


def action_information(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: Transaction UID and one Referenced SOP Sequence item per
    (SOP class, SOP instance) delivered."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


class MalformedReport(ValueError):
    """An N-EVENT-REPORT whose Event Information cannot be read (no Transaction UID, broken items)."""


def read_report(event_type: int | None, info: Dataset | None, calling_ae: str, peer_host: str,
                same_association: bool) -> CommitmentReport:
    """The report's content, or MalformedReport saying what is missing."""
    if info is None or not info.get("TransactionUID"):
        raise MalformedReport("no Transaction UID (0008,1195) in the Event Information")
    try:
        committed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                     for i in info.get("ReferencedSOPSequence", [])]
        failed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID),
                   int(i.FailureReason) if i.get("FailureReason") is not None else None)
                  for i in info.get("FailedSOPSequence", [])]
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedReport(f"a Referenced/Failed SOP Sequence item without its UIDs ({exc})") from None
    return CommitmentReport(str(info.TransactionUID), int(event_type or 0), committed, failed,
                            calling_ae, peer_host, same_association)


def answer_report(db: Database, policy: RetryPolicy, event_type: int | None, info: Dataset | None,
                  calling_ae: str, peer_host: str, same_association: bool) -> int:
    """Take one N-EVENT-REPORT (either association) and return the N-EVENT-REPORT-RSP status: 0x0000
    when it was taken, a failure status when it was refused (audited, nothing changed)."""
    with db.session() as s:
        try:
            report = read_report(event_type, info, calling_ae, peer_host, same_association)
        except MalformedReport as exc:
            refuse_report(s, calling_ae, peer_host, str(exc))
            return REPORT_REFUSED
        return settle_report(s, report, policy).status
