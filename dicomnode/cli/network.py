"""`dicomnode echo` and `dicomnode send`: a DICOM SCU for testing peers and sending files."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicomnode.cli.common import (
    NOTHING_TO_DO, UserError, ae_title_arg, console, out, parse_address, progress_bar, terminal_safe,
)

# the calling AE title of `echo` and `send`: their own, so that the node's console and audit say who
# called ("From DICOMNODE_SCU"), never the node's own title (PS3.5 AE: 16 characters at most)
SCU_AE_TITLE = "DICOMNODE_SCU"
NOTHING_SENT = NOTHING_TO_DO  # `send` found no DICOM file to send

ECHO_EPILOG = f"""The calling AE title is {SCU_AE_TITLE} unless --calling-ae says otherwise.
Exit codes: 0 the peer answered success; 1 it answered another status; 2 no association (refused,
unreachable) or a usage error."""
SEND_EPILOG = f"""Folders are searched recursively; files that are not DICOM are skipped and named.
The calling AE title is {SCU_AE_TITLE} unless --calling-ae says otherwise.
Exit codes: 0 every DICOM file found was stored; 1 the peer refused some (listed); 2 no association
or a usage error; {NOTHING_SENT} nothing to send (no DICOM file in the paths given)."""


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.deliver.scu import ScuError, echo

    address = parse_address(args.address)
    try:
        status = echo(address, args.calling_ae, args.timeout)
    except ScuError as exc:
        raise UserError(str(exc)) from None
    out.print(f"C-ECHO {address}: status 0x{status:04X} {'(success)' if status == 0 else ''}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from dicomnode.deliver.scu import ScuError, dicom_files, send_files

    address = parse_address(args.address)
    try:
        files = dicom_files(args.paths)
        with progress_bar() as progress:
            task = progress.add_task(f"C-STORE to {address}", total=len(files))
            report = send_files(address, files, args.calling_ae, lambda _: progress.advance(task), args.timeout)
    except ScuError as exc:
        raise UserError(str(exc)) from None
    for path, why in report.skipped:
        console.print(f"[yellow]skipped[/] {terminal_safe(str(path))}: {terminal_safe(str(why))}", soft_wrap=True)
    for path, why in report.failed:
        console.print(f"[red]failed[/] {terminal_safe(str(path))}: {terminal_safe(str(why))}", soft_wrap=True)
    out.print(f"sent {report.sent}, failed {len(report.failed)}, skipped {len(report.skipped)}")
    if not report.sent and not report.failed:
        console.print(f"[red]nothing sent:[/] no DICOM file in {terminal_safe(', '.join(map(str, args.paths)))}",
                      highlight=False, soft_wrap=True)
        return NOTHING_SENT
    return 0 if not report.failed else 1


def add_commands(sub: Any) -> None:
    """echo, send"""
    p = sub.add_parser("echo", help="C-ECHO a DICOM peer", epilog=ECHO_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", help="AET@HOST:PORT")
    p.add_argument("--calling-ae", default=SCU_AE_TITLE, type=ae_title_arg,
                   help=f"our AE title in the association (default {SCU_AE_TITLE})")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer", epilog=SEND_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", help="AET@HOST:PORT")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--calling-ae", default=SCU_AE_TITLE, type=ae_title_arg,
                   help=f"our AE title in the association (default {SCU_AE_TITLE})")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_send)
