"""`dicomnode serve|analyze|echo|send|audit|retry|model|phantom|config|user|token`.

One module per command group (serve, network, audit, config, model); this one assembles the
parser and runs a command, turning the user's mistakes into messages.
"""
from __future__ import annotations

import argparse
import os
import sys

from dicomnode.cli import audit, config, network, serve
from dicomnode.cli import reprocess
from dicomnode.cli.common import UserError, print_error
from dicomnode.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description="A DICOM node that finds lung nodules in chest CT.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serve, network, audit, config):
        group.add_commands(sub)
    reprocess.add_commands(sub)
    _add_model_commands(sub)
    return parser


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """analyze, model and phantom live in cli/model.py (they import the inference stack)."""
    try:
        from dicomnode.cli.model import add_model_commands
    except ImportError:
        return
    add_model_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader went away (`dicomnode audit ... | head`): not an error worth a traceback; point
        # stdout at /dev/null so the interpreter's last flush does not complain either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UserError, ConfigError) as exc:
        print_error("error:", exc)
        return 2
    except Exception as exc:
        from dicomnode.node import StartupError  # imported late: it loads the whole node

        if isinstance(exc, StartupError):
            print_error("cannot start:", exc)
            return 2
        raise

