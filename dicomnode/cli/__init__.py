"""`dicomnode serve|analyze|echo|send|audit|retry|model|phantom|config|user|token`.

One module per command group (serve, network, audit, config, analyze, phantom, model); this one assembles the
parser and runs a command, turning the user's mistakes into messages.
"""
from __future__ import annotations

import argparse
import os
import sys

from dicomnode import __version__
from dicomnode.cli import audit, config, network, reprocess, retention, serve
from dicomnode.cli.common import UserError, print_error
from dicomnode.config import ConfigError

# every command group, in the order of `dicomnode --help`; a new group is one more entry here
COMMAND_GROUPS = [serve, network, audit, config, reprocess, retention]

EXIT_CODES = """exit codes: 0 done; 1 done in part (a peer refused some instances, a delivery is still
pending, C-ECHO answered a failure); 2 a usage, configuration or start-up error: nothing done;
3 nothing to do (`send` found no DICOM file, `retry --all-dead` no dead letter). `dicomnode COMMAND --help` says more."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description="A DICOM node that finds lung nodules in chest CT.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    _add_model_commands(sub)
    return parser


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """analyze, phantom and model (cli/analyze.py, cli/phantom.py, cli/model.py) import the inference stack."""
    try:
        from dicomnode.cli.analyze import add_analyze_command
        from dicomnode.cli.model import add_model_commands
        from dicomnode.cli.phantom import add_phantom_command
    except ImportError:
        return
    add_analyze_command(sub)
    add_phantom_command(sub)
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
        from dicomnode.startup import StartupError

        if isinstance(exc, StartupError):
            print_error("cannot start:", exc)
            return 2
        raise

