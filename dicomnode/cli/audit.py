"""`dicomnode audit` (query the audit database) and `dicomnode retry` (send deliveries again)."""
from __future__ import annotations

import argparse
from enum import StrEnum
from typing import Any

from dicomnode.cli.common import NOTHING_TO_DO, UserError, add_settings_args, open_db, out, print_rows
from storage.audit_subjects import AUDIT_SUBJECTS, NODE_STATES
from storage.events import EventCode
from storage.states import AssociationState, DeliveryState, JobState, SeriesState

# what --status may be for each subject: its states (events: a level or an event name)
EVENT_LEVELS = ("info", "warning", "error")


def status_choices(subject: str) -> tuple[str, ...]:
    """The valid --status values of one audit subject."""
    states: dict[str, type[StrEnum]] = {"associations": AssociationState, "series": SeriesState, "jobs": JobState,
                                        "deliveries": DeliveryState}
    if subject in states:
        return tuple(state.value for state in states[subject])
    if subject == "findings":  # findings filter on their Lung-RADS category
        return ("0", "1", "2", "3", "4A", "4B", "4X")
    if subject == "nodes":
        return NODE_STATES
    if subject == "events":
        return EVENT_LEVELS + tuple(code.name.lower() for code in EventCode)
    return ()  # instances and dead-letters have no status to filter on


def checked_status(subject: str, status: str | None) -> str | None:
    """`status` in the form the query compares, or a UserError listing the choices (exit 2)."""
    if status is None:
        return None
    choices = status_choices(subject)
    if not choices:
        raise UserError(f"audit {subject} has no --status filter")
    for choice in choices:
        if status.lower() == choice.lower():
            return choice
    listed = ", ".join(choices) if subject != "events" else ", ".join(EVENT_LEVELS) + " or an event name (e.g. " \
        "delivery_dead_letter; see `dicomnode audit events --format json`)"
    raise UserError(f"--status {status!r} is not a state of {subject}; choose from {listed}")


def cmd_audit(args: argparse.Namespace) -> int:
    from storage.queries import AuditFilter, parse_since, run_query

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    status = checked_status(args.what, args.status)
    if args.wide and args.format != "table":
        raise UserError("--wide is for tables; json and csv always carry every field")
    settings, db = open_db(args)
    try:
        with db.session() as s:
            if args.what == "nodes":  # "silent": no heartbeat for longer than this setup's lease
                from storage.queries import nodes
                rows = nodes(s, AuditFilter(since, status, args.series, args.limit), settings.node.lease_s)
            else:
                rows = run_query(s, args.what, AuditFilter(since, status, args.series, args.limit))
    finally:
        db.close()  # the connection goes now, not when the interpreter ends (main() also runs in-process)
    print_rows(rows, args.format, args.what, wide=args.wide)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from dicomnode.deliver.retry import RetryRefused, requeue_deliveries, wait_for_outcome
    from dicomnode.deliver.sender import ResultSender

    if args.delivery is None and not args.all_dead:
        raise UserError("say which: --delivery ID or --all-dead")
    settings, db = open_db(args)
    try:
        ids = requeue_deliveries(db, args.delivery, args.all_dead)
    except RetryRefused as exc:
        raise UserError(str(exc)) from None
    if not ids and args.delivery is not None:
        raise UserError(f"no delivery {args.delivery} that can be sent again (see `dicomnode audit deliveries`)")
    if not ids:
        out.print("nothing to retry: no dead letters", highlight=False)
        return NOTHING_TO_DO
    out.print(f"queued {len(ids)} delivery(ies) again: {', '.join(map(str, ids))}")
    if args.queue_only:
        return 0
    ResultSender(db, settings.outbox_dir, settings).send_due(only_ids=ids)
    # a running node may have picked some up first: report what happened, whoever sent them
    outcome = wait_for_outcome(db, ids)
    # a destination with storage commitment: stored, its report may come later (to the node's SCP)
    awaiting = outcome.get(DeliveryState.AWAITING_COMMITMENT, 0)
    delivered = outcome.get(DeliveryState.DELIVERED, 0) + outcome.get(DeliveryState.COMMITTED, 0) + awaiting
    waiting = f" ({awaiting} awaiting storage commitment)" if awaiting else ""
    out.print(f"delivered {delivered} of {len(ids)} now{waiting}; the rest stay queued with backoff")
    return 0 if delivered == len(ids) else 1


AUDIT_EPILOG = """--status values per subject:
  associations: {associations}
  series: {series}
  jobs: {jobs}
  deliveries: {deliveries}
  findings (Lung-RADS): {findings}
  nodes: {nodes} (silent: no heartbeat for longer than node.lease_s; lost: presumed dead, work taken over)
  events: a level ({levels}) or an event name

Tables fit the terminal (COLUMNS, else its width; 250 columns when piped): the least important
columns are left out and long UIDs shortened to their last 12 characters; --wide shows every field
in full, --format json or csv every field unabridged.
Exit codes: 0 rows printed (also none), 2 a usage or configuration error."""


def _audit_epilog() -> str:
    return AUDIT_EPILOG.format(**{s: ", ".join(status_choices(s)) for s in
                                  ("associations", "series", "jobs", "deliveries", "findings", "nodes")},
                               levels=", ".join(EVENT_LEVELS))


def add_commands(sub: Any) -> None:
    """audit, retry"""
    p = sub.add_parser("audit", help="query the audit database", epilog=_audit_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=AUDIT_SUBJECTS)
    add_settings_args(p)
    p.add_argument("--since", help="ISO date/time or an age such as 30m, 2h, 7d")
    p.add_argument("--status", help="state to keep (the choices per subject are listed below)")
    p.add_argument("--series", help="SeriesInstanceUID (or a prefix)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--wide", action="store_true", help="a table with every field in full (may be wider than the terminal)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("retry", help="send a delivery or all dead letters again")
    add_settings_args(p)
    p.add_argument("--delivery", type=int, help="delivery id (see `dicomnode audit deliveries`)")
    p.add_argument("--all-dead", action="store_true", help="every dead letter")
    p.add_argument("--queue-only", action="store_true", help="queue for the running node instead of sending now")
    p.set_defaults(func=cmd_retry)
