"""`dicomnode config`, `dicomnode user` and `dicomnode token`: settings and console secrets
(written to the config file only as hashes)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from dicomnode.cli.common import UserError, add_settings_args, console, settings_from_args, terminal_safe
from dicomnode.config import EXAMPLE_CONFIG, USER_NAME_RE, redacted_dump, security_warnings


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
    settings = settings_from_args(args)
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


def add_commands(sub: Any) -> None:
    """config, user, token"""
    p = sub.add_parser("config", help="check or print configuration")
    p.add_argument("action", choices=["check", "example", "hash-password"])
    add_settings_args(p)
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
