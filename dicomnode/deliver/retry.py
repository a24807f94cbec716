"""Re-sending deliveries: one delivery, or every dead letter, back in the queue with a fresh attempt
count. Used by `dicomnode retry` and by the web console (docs/architecture.md, "Delivery")."""
from __future__ import annotations

import time

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.audit import record_event
from storage.db import Database
from storage.events import EventCode
from storage.models import Delivery, Instance, Job, Series, utcnow
from storage.states import DeliveryKind, DeliveryState


class RetryRefused(Exception):
    """The delivery cannot be sent again: its file is gone (removed by retention)."""


def removed_by_retention(s: Session, delivery: Delivery) -> datetime | None:
    """When retention removed the file this delivery would send (None: it is still there)."""
    if delivery.kind == DeliveryKind.FORWARD:  # a source instance in the spool
        return s.execute(select(Instance.deleted_at)
                         .where(Instance.sop_instance_uid == delivery.sop_instance_uid)).scalar()
    removed: datetime | None = s.execute(select(Series.results_deleted_at).join(Job, Job.series_id == Series.id)
                                         .where(Job.id == delivery.job_id)).scalar()
    # a result made after the removal (a re-run) has its files
    return removed if removed is not None and removed >= delivery.created_at else None


def requeue_deliveries(db: Database, delivery_id: int | None = None, all_dead: bool = False,
                       actor: str = "cli") -> list[int]:
    """Put one delivery, or every dead letter, back in the queue with a fresh attempt count."""
    with db.session() as s:
        query = select(Delivery.id)
        if delivery_id is not None:
            query = query.where(Delivery.id == delivery_id, Delivery.state.in_((DeliveryState.DEAD, DeliveryState.PENDING, DeliveryState.DELIVERED)))
        elif all_dead:
            query = query.where(Delivery.state == DeliveryState.DEAD)
        else:
            raise ValueError("name a delivery or ask for all dead letters")
        ids = list(s.execute(query).scalars())
        if delivery_id is not None and ids:
            delivery = s.get(Delivery, delivery_id)
            removed = None if delivery is None else removed_by_retention(s, delivery)
            if removed is not None:
                raise RetryRefused(f"delivery {delivery_id} cannot be sent again: its file was removed by retention "
                                   f"on {removed:%Y-%m-%d}; `dicomnode reprocess` makes the result again")
        if ids:
            s.execute(update(Delivery).where(Delivery.id.in_(ids))
                      .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=utcnow(), last_error=None))
        for i in ids:
            record_event(s, EventCode.DELIVERY_RETRY_REQUESTED, f"re-send requested by {actor}", delivery_id=i)
    return ids


def wait_for_outcome(db: Database, ids: list[int], timeout_s: float = 60.0) -> dict[str, int]:
    """States of these deliveries once none is mid-send (a running node may have claimed them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as s:
            states = list(s.execute(select(Delivery.state).where(Delivery.id.in_(ids))).scalars())
        if DeliveryState.SENDING not in states or time.monotonic() > deadline:
            return {state: states.count(state) for state in set(states)}
        time.sleep(0.2)


def requeue_for_user(db: Database, user: str, client: str, delivery_id: int | None) -> list[int]:
    """Re-queue one delivery (or every dead letter when delivery_id is None) for a console user,
    audited as an admin action naming the user and the client."""
    ids = requeue_deliveries(db, delivery_id=delivery_id, all_dead=delivery_id is None, actor=f"web user {user}")
    what = f"delivery {delivery_id}" if delivery_id is not None else "all dead letters"
    with db.session() as s:
        record_event(s, EventCode.ADMIN_ACTION, f"{user} re-queued {what} from {client}: {len(ids)} delivery(ies)",
                     delivery_id=delivery_id, details={"user": user, "client": client, "action": "retry",
                                                       "deliveries": ids})
    return ids
