"""Checks of single setting values (AE titles, hosts, networks, paths, URLs, code strings), shared by the sections; and
the errors a bad configuration raises."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from dicomnode.core.uids import printable

# PS3.5 AE VR: the default repertoire without backslash and control characters, 16 at most
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
# a host name label (RFC 1123; "_" too, as Docker service names use it)
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
# a CS value (modality, body part): letters, digits, space, underscore, 16 at most
_CODE_STRING_RE = re.compile(r"^[A-Za-z0-9 _]{1,16}$")
# a pipeline: the built-in name or "package.module:callable"
PIPELINE_RE = re.compile(r"^(lung-nodule|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
# a user name for the console: also a TOML key and an audit field
USER_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ConfigError(Exception):
    """A configuration problem, with a message that names the bad key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_ae_title(value: str) -> str:
    stripped = value.strip()  # leading and trailing spaces are not significant (PS3.5)
    if not stripped:
        raise ValueError("an AE title must not be empty or all spaces")
    if not AE_TITLE_RE.match(stripped):
        raise ValueError(f"{printable(value, 40)} is not a valid AE title (at most 16 characters, printable ASCII, "
                         "no backslash or control characters)")
    return stripped



def check_host(value: str) -> str:
    """An IP address or a host name (what a socket can bind to or connect to)."""
    host = value.strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.removesuffix(".")
    labels = name.split(".")
    if (name and len(name) <= 253 and all(_HOST_LABEL_RE.match(label) for label in labels)
            and not labels[-1].isdigit()):  # "10.0.0.300" is a bad address, not a host name
        return host
    raise ValueError(f"{printable(value, 40)} is not an IP address or a host name")


def check_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{printable(value, 40)} is not an IP address or a CIDR network (e.g. 10.0.0.0/8)") from None


def check_path(value: Path | None) -> Path | None:
    if value is not None and _CONTROL_RE.search(str(value)):
        raise ValueError(f"{printable(str(value), 40)} contains control characters")
    return value


_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_node_id(value: str | None) -> str | None:
    if value is not None and not _NODE_ID_RE.fullmatch(value):
        raise ValueError(f"{printable(value, 40)} is not a node id (letters, digits, . _ -; starts with a letter "
                         "or digit; 64 at most)")
    return value


def check_database_url(value: str | None) -> str | None:
    """A URL SQLAlchemy can parse, for a dialect it knows. Never echoes the URL (it may hold a password)."""
    if value is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError("is not a database URL (e.g. sqlite:////var/lib/dicomnode/audit.sqlite or "
                         "postgresql+psycopg://dicomnode@db/dicomnode)") from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"names an unknown database dialect/driver {url.drivername!r}") from None
    return value


def redact_url(value: str) -> str:
    """A database URL with its password hidden, for output and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(value).render_as_string(hide_password=True)
    except Exception:  # not parseable: show nothing of it
        return "(hidden)"


def check_code_string(value: str) -> str:
    if not _CODE_STRING_RE.match(value.strip()):
        raise ValueError(f"{printable(value, 40)} is not a DICOM code string (letters, digits, space, _; 16 at most)")
    return value.strip()


AETitle = Annotated[str, AfterValidator(check_ae_title)]
Network = Annotated[str, AfterValidator(check_network)]
CodeString = Annotated[str, AfterValidator(check_code_string)]


def absent_files(section: BaseModel, keys: Sequence[str]) -> list[str]:
    """"key (path)" for each of `keys` of `section` set to a path that is not a file: `config check` must catch a
    wrong path, not the first connection that needs it."""
    return [f"{k} ({path})" for k in keys if (path := getattr(section, k)) is not None and not Path(path).is_file()]
