"""`dicomnode retention [--dry-run] [--json]`: apply the [retention] policy now, or show what it would remove."""
from __future__ import annotations

import argparse
import json
from typing import Any

from dicomnode.cli.common import add_settings_args, open_db, out, print_rows, terminal_safe
from dicomnode.core.sizes import human_bytes


def cmd_retention(args: argparse.Namespace) -> int:
    from dicomnode.retention.service import run_pass

    settings, db = open_db(args)
    try:
        report = run_pass(db, settings, dry_run=args.dry_run)
    finally:
        db.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    # 1: above the high-water mark and not enough may go; the admin must act
    return 1 if report.plan.shortfall_bytes else 0


def _print_report(report: Any) -> None:

    out.print("would remove (dry run):" if report.dry_run else "removed:", highlight=False)
    print_rows(report.rows(), "table", "removals")
    out.print(terminal_safe(report.pressure.describe()), highlight=False, soft_wrap=True)
    total = sum(r.bytes for r in report.plan.removals)
    verb = "would free" if report.dry_run else "freed"
    done = len(report.plan.removals) if report.dry_run else len(report.removed)
    out.print(f"{verb} {human_bytes(total)} in {done} removal(s)"
              + ("" if report.dry_run or done == len(report.plan.removals)
                 else f"; {len(report.plan.removals) - done} kept: the series changed since it was planned"),
              highlight=False)
    if report.resumed:
        out.print(f"finished {report.resumed} removal(s) an interrupted pass had started", highlight=False)
    if report.plan.kept:
        out.print("kept: " + ", ".join(f"{n} series {why}" for why, n in sorted(report.plan.kept.items())),
                  highlight=False, soft_wrap=True)
    if report.plan.shortfall_bytes:
        out.print(f"[red]WARNING:[/] above the high-water mark and {human_bytes(report.plan.shortfall_bytes)} more must go, "
                  "but nothing else may be deleted: send the pending deliveries, retry or resolve failed jobs, "
                  "or add disk before the node refuses data", highlight=False, soft_wrap=True)


def add_commands(sub: Any) -> None:
    """retention"""
    p = sub.add_parser("retention", help="remove files of finished series by the [retention] policy (or --dry-run)",
                       description="Applies [retention]: files of series delivered, ignored or not selected go "
                                   "source_days / results_days after they settled, and oldest first while the disk "
                                   "is above the high-water mark. Audit rows stay. Runs whether or not retention.enabled "
                                   "(which switches the node's periodic pass). Exit 1 when above the mark and nothing "
                                   "more may go.")
    add_settings_args(p)
    p.add_argument("--dry-run", action="store_true", help="list what would go, with sizes and why; delete nothing")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_retention)
