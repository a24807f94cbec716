"""DICOM UIDs from the network, checked to the grammar of PS3.5 section 9.1 before any use.

A UID is 1-64 characters of components separated by single dots; a component is ASCII digits,
without a leading zero unless it is exactly "0". Nothing else (no "..", ".", "/", "\\", NUL,
spaces or non-ASCII digits) passes, so a valid UID is always safe as a file or directory name.
"""
from __future__ import annotations

import re

UID_MAX_LENGTH = 64
# [0-9], not \d: \d would also accept non-ASCII digits such as "١"
_COMPONENT = r"(?:0|[1-9][0-9]*)"
_UID_RE = re.compile(rf"{_COMPONENT}(?:\.{_COMPONENT})*")


class InvalidUID(ValueError):
    """A UID outside the PS3.5 9.1 grammar; the message names the attribute and the reason."""


def uid_problem(value: object) -> str | None:
    """Why `value` is not a valid UID, or None when it is one."""
    if not isinstance(value, str):
        return f"not text ({type(value).__name__})"
    if not value:
        return "empty"
    if len(value) > UID_MAX_LENGTH:
        return f"{len(value)} characters, over the {UID_MAX_LENGTH} allowed"
    if _UID_RE.fullmatch(value) is None:
        return "not dot-separated numeric components without leading zeros (PS3.5 9.1)"
    return None


def is_valid_uid(value: object) -> bool:
    return uid_problem(value) is None


def check_uid(name: str, value: object) -> str:
    """`value` if it is a valid UID, else InvalidUID naming `name` and what is wrong."""
    problem = uid_problem(value)
    if problem is None and isinstance(value, str):  # uid_problem passes nothing but text
        return value
    raise InvalidUID(f"invalid {name} {printable(value)}: {problem}")


def printable(value: object, limit: int = 80) -> str:
    """A repr of an untrusted value that is safe in one log line and bounded in length."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"
