"""`dicomnode serve|analyze|echo|send|audit|retry|model|phantom|config|user|token`."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dicomnode.config import (EXAMPLE_CONFIG, USER_NAME_RE, ConfigError, Destination, Settings, check_ae_title,
                              check_host, load_settings, redacted_dump, security_warnings)
from dicomnode.core.dicom_address import DicomAddress

console = Console(stderr=True)
# piped output (less, grep, a file) gets wide rows instead of columns folded to 80 characters
out = Console(width=None if sys.stdout.isatty() else 250)


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


# -- shared option groups -----------------------------------------------------------
def _add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (see `dicomnode config example`)")
    p.add_argument("--data-dir", type=Path, help="spool, outbox and audit database live here")


# the flag behind each override, so that a bad value blames the flag and not the file
FLAG_KEYS = {"node.data_dir": "--data-dir", "node.port": "--port", "node.ae_title": "--ae-title",
             "web.port": "--web-port", "series.stable_seconds": "--stable-seconds"}


def _settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["node.data_dir"] = args.data_dir
    overrides.update(extra or {})
    flags = {key: f"flag {FLAG_KEYS.get(key, key)}" for key in overrides}
    return load_settings(args.config, overrides, flags)


def _warn(settings: Settings) -> None:
    """The loud warnings of `config check`, logged at start-up too."""
    for text in security_warnings(settings):
        logging.getLogger("dicomnode.config").warning("SECURITY WARNING: %s", text)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


# -- serve ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.core.logs import setup_logging
    from dicomnode.node import Node

    extra: dict[str, Any] = {}
    if args.port is not None:
        extra["node.port"] = args.port
    if args.ae_title:
        extra["node.ae_title"] = args.ae_title
    if args.web_port is not None:
        extra["web.port"] = args.web_port
    if args.stable_seconds is not None:
        extra["series.stable_seconds"] = args.stable_seconds
    settings = _settings(args, extra)
    for i, text in enumerate(args.send_to or [], start=1):
        address = _address(text, "--send-to")
        name = f"send-to-{i}"
        settings.destinations[name] = Destination(ae_title=address.ae_title, host=address.host, port=address.port)
        for route in settings.routes:
            route.destinations.append(name)
    setup_logging(args.log_level, args.log_format)
    _warn(settings)
    node = Node(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    web = f", console http://{settings.web.host}:{node.web.port}" if node.web else ""
    console.print(f"[green]dicomnode[/] AE [bold]{escape(settings.node.ae_title)}[/] on port {settings.node.port}"
                  f"{escape(web)}; data in {escape(str(settings.node.data_dir.resolve()))}; Ctrl-C stops")
    stop.wait()
    node.stop()
    return 0


# -- echo / send ---------------------------------------------------------------------
def _address(text: str, flag: str = "address") -> DicomAddress:
    """AET@HOST:PORT with the same AE title and host rules as the config file."""
    try:
        address = DicomAddress.parse(text)
        return DicomAddress(check_ae_title(address.ae_title), check_host(address.host), address.port)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _ae_title_arg(text: str) -> str:
    try:
        return check_ae_title(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.deliver.scu import ScuError, echo

    address = _address(args.address)
    try:
        status = echo(address, args.calling_ae, args.timeout)
    except ScuError as exc:
        raise UserError(str(exc)) from None
    out.print(f"C-ECHO {address}: status 0x{status:04X} {'(success)' if status == 0 else ''}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from dicomnode.deliver.scu import ScuError, dicom_files, send_files

    address = _address(args.address)
    try:
        files = dicom_files(args.paths)
        with _progress() as progress:
            task = progress.add_task(f"C-STORE to {address}", total=len(files))
            report = send_files(address, files, args.calling_ae, lambda _: progress.advance(task), args.timeout)
    except ScuError as exc:
        raise UserError(str(exc)) from None
    for path, why in report.skipped:
        console.print(f"[yellow]skipped[/] {terminal_safe(str(path))}: {terminal_safe(str(why))}")
    for path, why in report.failed:
        console.print(f"[red]failed[/] {terminal_safe(str(path))}: {terminal_safe(str(why))}")
    out.print(f"sent {report.sent}, failed {len(report.failed)}, skipped {len(report.skipped)}")
    return 0 if not report.failed else 1


# -- audit / retry -------------------------------------------------------------------
def _open_db(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dicomnode.node import open_database

    settings = _settings(args)
    if settings.database_url.startswith("sqlite:///") and not Path(settings.database_url[10:]).exists():
        raise UserError(f"no audit database at {settings.database_url[10:]}: is --data-dir/--config right?")
    return settings, open_database(settings)


# C0/C1 controls and DEL: an ESC from a DICOM header must not reach the terminal as an escape sequence
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# a spreadsheet runs a cell that starts with one of these as a formula (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _no_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def terminal_safe(text: str) -> str:
    """Text from outside (DICOM headers, file names) for rich: no control characters, no markup."""
    return escape(_no_controls(text))


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text, never runs: a leading ' defuses = + - @."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    if not isinstance(value, str):
        return value  # numbers (also negative ones) stay numbers
    value = _no_controls(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def print_rows(rows: list[dict[str, Any]], fmt: str, title: str = "") -> None:
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
        table = Table(title=terminal_safe(title) or None, show_lines=False)
        columns = list(rows[0]) if rows else []
        for c in columns:
            table.add_column(terminal_safe(c), overflow="fold")
        for row in rows:
            table.add_row(*("" if row[c] is None else terminal_safe(str(row[c])) for c in columns))
        out.print(table if rows else f"no {terminal_safe(title or 'rows')}")


def cmd_audit(args: argparse.Namespace) -> int:
    from storage.queries import AuditFilter, parse_since, run_query

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _, db = _open_db(args)
    with db.session() as s:
        rows = run_query(s, args.what, AuditFilter(since, args.status, args.series, args.limit))
    print_rows(rows, args.format, args.what)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from dicomnode.deliver.sender import Sender, requeue_deliveries, wait_for_outcome

    if args.delivery is None and not args.all_dead:
        raise UserError("say which: --delivery ID or --all-dead")
    settings, db = _open_db(args)
    ids = requeue_deliveries(db, args.delivery, args.all_dead)
    if not ids:
        raise UserError("nothing to retry" + (f": no delivery {args.delivery}" if args.delivery else ": no dead letters"))
    out.print(f"queued {len(ids)} delivery(ies) again: {', '.join(map(str, ids))}")
    if args.queue_only:
        return 0
    Sender(db, settings.outbox_dir, settings).send_due(only_ids=ids)
    # a running node may have picked some up first: report what happened, whoever sent them
    outcome = wait_for_outcome(db, ids)
    delivered = outcome.get("delivered", 0)
    out.print(f"delivered {delivered} of {len(ids)} now; the rest stay queued with backoff")
    return 0 if delivered == len(ids) else 1


# -- config ----------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "example":
        sys.stdout.write(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
        return 0
    if args.action == "hash-password":
        from dicomnode.core.passwords import hash_password

        if args.password:
            console.print("[yellow]warning:[/] --password is visible to other users (ps, shell history); "
                          "prefer the prompt or --password-stdin", soft_wrap=True)
        print(hash_password(args.password or _read_password(args.password_stdin)))
        return 0
    settings = _settings(args)
    print(json.dumps(redacted_dump(settings), indent=2))  # secrets are never printed
    for text in security_warnings(settings):
        console.print(f"[bold red]SECURITY WARNING:[/] {escape(text)}", highlight=False, soft_wrap=True)
    console.print("[green]configuration is valid[/]")
    return 0


# -- user add / token create: secrets go into the config file only as hashes --------------------
def _read_password(from_stdin: bool) -> str:
    """From stdin (one line) with --password-stdin, else typed twice at a terminal, never echoed."""
    from dicomnode.core.passwords import MIN_PASSWORD_LENGTH

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        if not sys.stdin.isatty():
            raise UserError("no terminal to ask for the password: use --password-stdin")
        password = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != password:
            raise UserError("the passwords differ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    return password


def _edit_web_section(path: Path, change: Callable[[Any], None]) -> None:
    """Apply `change` to the [web] table of a TOML file, keeping its comments and everything else;
    the file is replaced atomically and keeps its permissions (new files are private: 0600)."""
    import tomllib

    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        doc = tomlkit.parse(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    except TOMLKitError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    if "web" not in doc:
        doc["web"] = tomlkit.table()
    if not isinstance(doc["web"], dict):
        raise UserError(f"{path}: web is not a table")
    change(doc["web"])
    new_text = tomlkit.dumps(doc)
    tomllib.loads(new_text)  # what the node will read back
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new_text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


def _set_user(web: Any, name: str, encoded: str) -> None:
    import tomlkit

    if "users" not in web:
        web["users"] = tomlkit.inline_table()
    if not isinstance(web["users"], dict):
        raise UserError("web.users in the config file is not a table")
    web["users"][name] = encoded


def _add_token(web: Any, digest: str) -> None:
    import tomlkit

    if "api_tokens" not in web:
        web["api_tokens"] = tomlkit.array()
    if not isinstance(web["api_tokens"], list):
        raise UserError("web.api_tokens in the config file is not a list")
    web["api_tokens"].append(digest)


def cmd_user(args: argparse.Namespace) -> int:
    from dicomnode.core.passwords import hash_password

    if not USER_NAME_RE.match(args.name):
        raise UserError("a user name may hold only letters, digits and . _ @ - (64 at most)")
    encoded = hash_password(_read_password(args.password_stdin))
    if args.print or args.config is None:
        print(f'users = {{ "{args.name}" = "{encoded}" }}')
        console.print("put this line in the [web] section of the config file (it holds a hash, not the password)",
                      markup=False, soft_wrap=True)
        return 0
    _edit_web_section(args.config, lambda web: _set_user(web, args.name, encoded))
    console.print(f"user {args.name} saved in {terminal_safe(str(args.config))} (web.users, as a PBKDF2 hash); "
                  "restart the node to apply", highlight=False, soft_wrap=True)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from dicomnode.core.passwords import hash_token, new_token

    token = new_token()
    if args.config is not None:
        digest = hash_token(token)
        _edit_web_section(args.config, lambda web: _add_token(web, digest))
        where = f"its hash was added to web.api_tokens in {terminal_safe(str(args.config))}; restart the node to apply"
    else:
        where = f'put its hash in \\[web] api_tokens: "{hash_token(token)}"'
    print(token)
    console.print(f"this token is shown ONCE (send it as Authorization: Bearer <token>); {where}",
                  highlight=False, soft_wrap=True)
    return 0


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from storage.queries import AUDIT_SUBJECTS

    parser = argparse.ArgumentParser(prog="dicomnode", description="A DICOM node that finds lung nodules in chest CT.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the node (DICOM AE, workers, sender, web console)")
    _add_settings_args(p)
    p.add_argument("--port", type=int, help="DICOM port (overrides node.port)")
    p.add_argument("--ae-title", help="this node's AE title (overrides node.ae_title)")
    p.add_argument("--web-port", type=int, help="web console port (overrides web.port; 0 picks a free one)")
    p.add_argument("--stable-seconds", type=float, help="series completion delay (overrides series.stable_seconds)")
    p.add_argument("--send-to", action="append", metavar="AET@HOST:PORT",
                   help="send every analysed series' results there (repeatable)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="kv", choices=["kv", "json"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    p.add_argument("address", help="AET@HOST:PORT")
    p.add_argument("--calling-ae", default="DICOMNODE", type=_ae_title_arg)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer")
    p.add_argument("address", help="AET@HOST:PORT")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--calling-ae", default="DICOMNODE", type=_ae_title_arg)
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("audit", help="query the audit database")
    p.add_argument("what", choices=AUDIT_SUBJECTS)
    _add_settings_args(p)
    p.add_argument("--since", help="ISO date/time or an age such as 30m, 2h, 7d")
    p.add_argument("--status", help="state/status to keep (e.g. failed, ignored, dead, rejected)")
    p.add_argument("--series", help="SeriesInstanceUID (or a prefix)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("retry", help="send a delivery or all dead letters again")
    _add_settings_args(p)
    p.add_argument("--delivery", type=int, help="delivery id (see `dicomnode audit deliveries`)")
    p.add_argument("--all-dead", action="store_true", help="every dead letter")
    p.add_argument("--queue-only", action="store_true", help="queue for the running node instead of sending now")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("config", help="check or print configuration")
    p.add_argument("action", choices=["check", "example", "hash-password"])
    _add_settings_args(p)
    p.add_argument("--password", help=argparse.SUPPRESS)  # kept for old scripts; visible in ps
    p.add_argument("--password-stdin", action="store_true", help="for hash-password: read the password from stdin")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("user", help="console users (stored as password hashes in the config file)")
    p.add_argument("action", choices=["add"], help="add a user or change a user's password")
    p.add_argument("name")
    p.add_argument("--config", type=Path, help="the TOML file to update (comments and other keys are kept)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead of a prompt")
    p.add_argument("--print", action="store_true", help="print the TOML line instead of writing the file")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("token", help="API tokens (stored as hashes in the config file)")
    p.add_argument("action", choices=["create"], help="print a new token once and store its hash")
    p.add_argument("--config", type=Path, help="the TOML file to update (comments and other keys are kept)")
    p.set_defaults(func=cmd_token)

    _add_model_commands(sub)
    return parser


def _add_model_commands(sub: Any) -> None:
    """analyze, model and phantom live in cli_model.py (they import the inference stack)."""
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
        _print_error("error:", exc)
        return 2
    except Exception as exc:
        from dicomnode.node import StartupError

        if isinstance(exc, StartupError):
            _print_error("cannot start:", exc)
            return 2
        raise


def _print_error(prefix: str, exc: Exception) -> None:
    # messages quote config keys like [destinations]: no markup, no hard wrapping
    console.print(f"[red]{prefix}[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
