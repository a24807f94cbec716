"""How a storage commitment report is judged (storage.commitment, dicomnode.core.commitment), on a
real migrated SQLite audit database: the cases the Orthanc tests cannot make Orthanc send."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.core.commitment import answer_report
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
