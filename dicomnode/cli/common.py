"""What every command group shares: the consoles, UserError, settings arguments, safe output."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicomnode.cli.tables import no_controls, render
from dicomnode.config import Settings, check_ae_title, check_host, load_settings, security_warnings, unknown_env_vars
from dicomnode.core.dicom_address import DicomAddress

if TYPE_CHECKING:  # the database layer (SQLAlchemy) is imported by the commands that open it, not by every command
    from storage.db import Database

console = Console(stderr=True)
# piped output (less, grep, a file) gets wide rows instead of columns folded to 80 characters
out = Console(width=None if sys.stdout.isatty() else 250)


# exit codes every command keeps (README, `dicomnode --help`): 0 done, 1 done in part, 2 error
NOTHING_TO_DO = 3  # the command found nothing to act on (no DICOM file to send, no delivery to retry)


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (see `dicomnode config example`)")
    p.add_argument("--data-dir", type=Path, help="spool, outbox and audit database live here")


# the flag behind each override, so that a bad value blames the flag and not the file
FLAG_KEYS = {"node.data_dir": "--data-dir", "node.port": "--port", "node.ae_title": "--ae-title", "node.host": "--host",
             "web.port": "--web-port", "series.stable_seconds": "--stable-seconds"}


def settings_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["node.data_dir"] = args.data_dir
    overrides.update(extra or {})
    flags = {key: f"flag {FLAG_KEYS.get(key, key)}" for key in overrides}
    for text in unknown_env_vars():  # a misspelt variable would otherwise be ignored without a word
        console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)
    return load_settings(args.config, overrides, flags)


def warn_security(settings: Settings) -> None:
    """The loud warnings of `config check`, logged at start-up too."""
    for text in security_warnings(settings):
        logging.getLogger("dicomnode.config").warning("SECURITY WARNING: %s", text)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def parse_address(text: str, flag: str = "address") -> DicomAddress:
    """AET@HOST:PORT with the same AE title and host rules as the config file."""
    try:
        address = DicomAddress.parse(text)
        return DicomAddress(check_ae_title(address.ae_title), check_host(address.host), address.port)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def ae_title_arg(text: str) -> str:
    try:
        return check_ae_title(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def open_db(args: argparse.Namespace) -> tuple[Settings, Database]:
    from dicomnode.startup import open_database

    settings = settings_from_args(args)
    if settings.database_url.startswith("sqlite:///") and not Path(settings.database_url[10:]).exists():
        raise UserError(f"no audit database at {settings.database_url[10:]}: is --data-dir/--config right?")
    return settings, open_database(settings)


# a spreadsheet runs a cell that starts with one of these as a formula (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def terminal_safe(text: str) -> str:
    """Text from outside (DICOM headers, file names) for rich: no control characters, no markup."""
    return escape(no_controls(text))


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text, never runs: a leading ' defuses = + - @."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    if not isinstance(value, str):
        return value  # numbers (also negative ones) stay numbers
    value = no_controls(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def print_rows(rows: list[dict[str, Any]], fmt: str, title: str = "", wide: bool = False) -> None:
    """json and csv carry every field unabridged; a table fits the terminal (cli/tables.py) unless wide."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))  # json escapes control characters itself
    elif fmt == "csv":
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: csv_cell(v) for k, v in row.items()})
        sys.stdout.write(buffer.getvalue())
    else:
        sys.stdout.write(render(rows, title or "rows", wide=wide))


def print_error(prefix: str, exc: Exception) -> None:
    # messages quote config keys like [destinations]: no markup, no hard wrapping
    console.print(f"[red]{prefix}[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
