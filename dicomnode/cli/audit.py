"""`dicomnode audit` (query the audit database) and `dicomnode retry` (send deliveries again)."""
from __future__ import annotations

import argparse
from typing import Any

from dicomnode.cli.common import UserError, add_settings_args, open_db, out, print_rows
from storage.states import DeliveryState


def cmd_audit(args: argparse.Namespace) -> int:
    from storage.queries import AuditFilter, parse_since, run_query

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _, db = open_db(args)
    with db.session() as s:
        rows = run_query(s, args.what, AuditFilter(since, args.status, args.series, args.limit))
    if args.what == "findings" and args.format == "table":
        from storage.queries import compact_finding

        rows = [compact_finding(r) for r in rows]  # readable width; json/csv carry every column
    print_rows(rows, args.format, args.what)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from dicomnode.deliver.retry import requeue_deliveries, wait_for_outcome
    from dicomnode.deliver.sender import ResultSender

    if args.delivery is None and not args.all_dead:
        raise UserError("say which: --delivery ID or --all-dead")
    settings, db = open_db(args)
    ids = requeue_deliveries(db, args.delivery, args.all_dead)
    if not ids:
        raise UserError("nothing to retry" + (f": no delivery {args.delivery}" if args.delivery else ": no dead letters"))
    out.print(f"queued {len(ids)} delivery(ies) again: {', '.join(map(str, ids))}")
    if args.queue_only:
        return 0
    ResultSender(db, settings.outbox_dir, settings).send_due(only_ids=ids)
    # a running node may have picked some up first: report what happened, whoever sent them
    outcome = wait_for_outcome(db, ids)
    delivered = outcome.get(DeliveryState.DELIVERED, 0)
    out.print(f"delivered {delivered} of {len(ids)} now; the rest stay queued with backoff")
    return 0 if delivered == len(ids) else 1


def add_commands(sub: Any) -> None:
    """audit, retry"""
    from storage.queries import AUDIT_SUBJECTS

    p = sub.add_parser("audit", help="query the audit database")
    p.add_argument("what", choices=AUDIT_SUBJECTS)
    add_settings_args(p)
    p.add_argument("--since", help="ISO date/time or an age such as 30m, 2h, 7d")
    p.add_argument("--status", help="state/status to keep (e.g. failed, ignored, dead, rejected)")
    p.add_argument("--series", help="SeriesInstanceUID (or a prefix)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("retry", help="send a delivery or all dead letters again")
    add_settings_args(p)
    p.add_argument("--delivery", type=int, help="delivery id (see `dicomnode audit deliveries`)")
    p.add_argument("--all-dead", action="store_true", help="every dead letter")
    p.add_argument("--queue-only", action="store_true", help="queue for the running node instead of sending now")
    p.set_defaults(func=cmd_retry)
