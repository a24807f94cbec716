"""Writing audit events: one call, a stable code, the ids it is about."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from storage.events import EventCode
from storage.models import Event

log = logging.getLogger("dicomnode.audit")

_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def record_event(
    session: Session,
    code: EventCode,
    message: str,
    *,
    association_id: int | None = None,
    series_instance_uid: str | None = None,
    job_id: int | None = None,
    delivery_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """Add an audit row to the session (committed with the caller's unit of work) and log it."""
    row = Event(
        code=int(code),
        name=code.name,
        level=code.level,
        message=message,
        association_id=association_id,
        series_instance_uid=series_instance_uid,
        job_id=job_id,
        delivery_id=delivery_id,
        details=details,
    )
    session.add(row)
    context = {
        k: v
        for k, v in (
            ("event", int(code)),
            ("association", association_id),
            ("series", series_instance_uid),
            ("job", job_id),
            ("delivery", delivery_id),
        )
        if v is not None
    }
    log.log(_LOG_LEVELS[code.level], "%s %s", code.name, message, extra={"context": context})
    return row
