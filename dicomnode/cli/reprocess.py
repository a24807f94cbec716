"""`dicomnode reprocess SERIES_UID [--pipeline NAME]`: analyse a series again (after a model update,
or a job that went wrong). Works on the data directory of a running node (its workers claim the
queued job) or a stopped one (the job runs when the node starts)."""
from __future__ import annotations

import argparse
import getpass
import json
import socket
from typing import Any

from dicomnode.cli.common import UserError, add_settings_args, open_db, out, terminal_safe


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def cmd_reprocess(args: argparse.Namespace) -> int:
    from dicomnode.process.reprocess import ReprocessError, ReprocessRequest, request_reprocess
    from dicomnode.receive.spool import Spool

    settings, db = open_db(args)
    request = ReprocessRequest(series_uid=args.series_uid.strip(), pipeline=args.pipeline, user=_os_user(),
                               client=f"cli on {socket.gethostname()}", via="cli")
    try:
        result = request_reprocess(db, Spool(settings.spool_dir, 0), settings, request)
    except ReprocessError as exc:
        raise UserError(str(exc)) from None
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2))
        return 0
    replaces = f", superseding job {result.supersedes_job_id}" if result.supersedes_job_id else ""
    to = ", ".join(result.destinations) or "no destinations"
    out.print(terminal_safe(f"queued job {result.job_id} for series {result.series_uid}: pipeline {result.pipeline!r} "
                            f"on {result.instances} instances{replaces}; results to {to}"), soft_wrap=True)
    out.print("a running node's workers pick it up now, a stopped node when it starts "
              f"(`dicomnode audit jobs --series {terminal_safe(result.series_uid)}` shows it)", soft_wrap=True)
    return 0


def add_commands(sub: Any) -> None:
    """reprocess"""
    p = sub.add_parser("reprocess", help="analyse a series again; the new result replaces the old one")
    p.add_argument("series_uid", metavar="SERIES_UID", help="Series Instance UID (see `dicomnode audit series`)")
    p.add_argument("--pipeline", help="pipeline to run (default: the one of the series' last job, or its route's)")
    add_settings_args(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_reprocess)
