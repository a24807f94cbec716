"""How a storage commitment report is judged (storage.commitment, dicomnode.core.commitment), on a
real migrated SQLite audit database: the cases the Orthanc tests cannot make Orthanc send."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.core.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL, answer_report
from dicomnode.receive.commitment_reports import CommitmentReports
from storage.commitment import NO_SUCH_EVENT_TYPE, REPORT_ACCEPTED, REPORT_REFUSED, RetryPolicy, expire_overdue
from storage.db import Database, sqlite_url
from storage.models import Delivery, Event, utcnow
from storage.states import DeliveryState

SC = "1.2.840.10008.5.1.4.1.1.7"
TXN = "1.2.826.0.1.3680043.8.498.77"
POLICY = RetryPolicy(max_attempts=3, backoff_initial_s=5, backoff_max_s=60)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(sqlite_url(tmp_path / "audit.sqlite"))
    database.migrate()
    with database.session() as s:
        for i in (1, 2):
            s.add(Delivery(destination="PACS", ae_title="PACS", host="127.0.0.1", port=104, sop_class_uid=SC,
                           sop_instance_uid=f"1.2.3.{i}", path=f"s/{i}.dcm", state=DeliveryState.AWAITING_COMMITMENT,
                           attempts=1, delivered_at=utcnow(), commit_transaction_uid=TXN, commit_requested_at=utcnow()))
    yield database
    database.close()


def _info(committed: list[str], failed: list[str] = [], uid: str | None = TXN) -> Dataset:
    info = Dataset()
    if uid is not None:
        info.TransactionUID = uid
    info.ReferencedSOPSequence = [_item(u) for u in committed]
    if failed:
        info.FailedSOPSequence = [_item(u, 0x0110) for u in failed]
    return info


def _item(uid: str, why: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = SC
    item.ReferencedSOPInstanceUID = uid
    if why is not None:
        item.FailureReason = why
    return item


def _states(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.execute(select(Delivery.state).order_by(Delivery.id)).scalars())


def _refusals(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.execute(select(Event.message).where(Event.name == "DELIVERY_COMMIT_REPORT_REFUSED")).scalars())


@pytest.mark.parametrize("event_type, info, host, status, why", [
    (1, _info(["1.2.3.1"], failed=["1.2.3.2"]), "127.0.0.1", REPORT_REFUSED, "event type 1 (all committed) with a Failed"),
    (3, _info(["1.2.3.1", "1.2.3.2"]), "127.0.0.1", NO_SUCH_EVENT_TYPE, "event type 3"),
    (1, _info(["1.2.3.1", "1.2.3.2"], uid=None), "127.0.0.1", REPORT_REFUSED, "no Transaction UID"),
    (1, _info([]), "127.0.0.1", REPORT_REFUSED, "names no instance"),
    (1, _info(["1.2.3.1", "1.2.3.2"]), "10.9.8.7", REPORT_REFUSED, "host 10.9.8.7 is not 127.0.0.1"),
])
def test_a_refused_report_is_audited_and_changes_nothing(db: Database, event_type: int, info: Dataset, host: str,
                                                         status: int, why: str) -> None:
    assert answer_report(db, POLICY, event_type, info, "PACS", host, same_association=False) == status
    assert _states(db) == ["awaiting_commitment", "awaiting_commitment"]
    refusals = _refusals(db)
    assert len(refusals) == 1 and why in refusals[0]


def test_an_instance_the_report_leaves_out_is_not_committed(db: Database) -> None:
    assert answer_report(db, POLICY, 1, _info(["1.2.3.1"]), "PACS", "127.0.0.1", same_association=False) == REPORT_ACCEPTED
    with db.session() as s:
        rows = s.execute(select(Delivery).order_by(Delivery.id)).scalars().all()
        assert [r.state for r in rows] == ["committed", "pending"]
        assert rows[0].committed_at is not None and rows[1].committed_at is None
        assert "does not name it" in (rows[1].last_error or "")
        # retried with the delivery backoff; the attempt was counted at its C-STORE, not again
        assert rows[1].attempts == 1 and rows[1].next_attempt_at > utcnow().replace(tzinfo=None) + timedelta(seconds=3)


def test_a_stored_delivery_never_asked_times_out_too(db: Database) -> None:
    """A crash between the C-STORE and the N-ACTION leaves a row awaiting without a transaction."""
    with db.session() as s:
        row = s.get(Delivery, 1)
        assert row is not None
        row.commit_transaction_uid, row.commit_requested_at = None, None
        row.delivered_at = utcnow() - timedelta(seconds=120)
        late = s.get(Delivery, 2)
        assert late is not None
        late.attempts = 3
        late.commit_requested_at = utcnow() - timedelta(seconds=120)
    with db.session() as s:
        assert sorted(expire_overdue(s, 60, POLICY)) == [1, 2]
    assert _states(db) == ["pending", "dead"]


def test_a_report_sent_as_soon_as_the_association_is_accepted_gets_its_response(db: Database) -> None:
    """pynetdicom serves an N-EVENT-REPORT in its own thread the moment it is decoded, possibly before
    the acceptor's EVT_ACCEPTED handlers (the node's audit row) return; a response ready by then was
    dropped, and the PACS waited out its DIMSE timeout (seen after a restart, on a busy machine).
    Here the acceptor's EVT_ACCEPTED handler is made slow on purpose; the report must still be answered,
    and judged only once the association is established."""
    reports = CommitmentReports(Settings(), db)
    established_at: list[float] = []
    judged_at: list[float] = []

    def slow_accept(event: evt.Event) -> None:
        time.sleep(1.0)
        established_at.append(time.monotonic())

    def on_report(event: evt.Event) -> tuple[int, Dataset | None]:
        answer = reports.on_report(event)
        judged_at.append(time.monotonic())
        return answer

    scp = AE(ae_title="DICOMNODE")
    CommitmentReports.accept_context(scp, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = scp.start_server(("127.0.0.1", 0), block=False,
                              evt_handlers=[(evt.EVT_ACCEPTED, slow_accept), (evt.EVT_N_EVENT_REPORT, on_report)])
    assert server is not None
    try:
        peer = AE(ae_title="PACS")
        peer.dimse_timeout = 10
        peer.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        assoc = peer.associate("127.0.0.1", server.server_address[1], ae_title="DICOMNODE",
                               ext_neg=[build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)])
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_event_report(_info(["1.2.3.1", "1.2.3.2"]), 1, STORAGE_COMMITMENT_PUSH_MODEL,
                                                  STORAGE_COMMITMENT_INSTANCE)
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert status and int(status.Status) == REPORT_ACCEPTED, "the PACS got its answer"
    assert _states(db) == ["committed", "committed"]
    assert judged_at[0] >= established_at[0], "judged only once the association was established"
