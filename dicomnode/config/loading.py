"""Loading the settings (a TOML file, then DICOMNODE_* environment variables, then CLI flags), with errors that name the
key and where its value came from; the names of every setting for "did you mean"."""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from dicomnode.config.checks import ConfigError
from dicomnode.config.network import Destination, Route
from dicomnode.config.settings import Settings


EXAMPLE_CONFIG = Path(__file__).parent.parent / "node.example.toml"
ENV_PREFIX = "DICOMNODE_"


def _key(loc: tuple[int | str, ...]) -> str:
    """("security", "allowed_hosts", 0) -> "security.allowed_hosts[0]"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def _env_vars() -> dict[tuple[str, ...], str]:
    """DICOMNODE_* variables by the settings path they set: ("node", "port") -> "DICOMNODE_NODE__PORT"."""
    found: dict[tuple[str, ...], str] = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX):
            found[tuple(name[len(ENV_PREFIX):].lower().split("__"))] = name
    return found


def _source_of(loc: tuple[int | str, ...], file: Path | None) -> str:
    """The environment variable that set this key, a section above it or a key below it (an error on
    `routes` can come from DICOMNODE_ROUTES__0__NAME), else the file, else the defaults."""
    path = tuple(str(p).lower() for p in loc)
    for env_path, name in _env_vars().items():
        common = min(len(path), len(env_path))
        if path[:common] == env_path[:common]:
            return f"environment variable {name}"
    return f"config file {file}" if file is not None else "the built-in defaults"


# -- the names of every setting, for "did you mean" and for unknown environment variables -------------
def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def setting_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key a config file may set ("node.port", "routes.match.min_slices", ...)."""
    keys: list[str] = []
    for name, field in (model or Settings).model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys.append(dotted)
        nested = _model_of(field.annotation)
        if model is None and name == "routes":
            nested = Route
        elif model is None and name == "destinations":
            nested, dotted = Destination, "destinations.NAME"
        if nested is not None:
            keys += setting_keys(nested, dotted)
    return keys


def nearest_key(key: str) -> str | None:
    """The valid key closest to a misspelt one (same section first), or None."""
    keys = setting_keys()
    section = key.rsplit(".", 1)[0] if "." in key else ""
    same = [k for k in keys if k.rsplit(".", 1)[0] == section] if section else [k for k in keys if "." not in k]
    for pool in (same, keys):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "__")


# settings whose values are tables the admin names (any name below them is fine)
_OPEN_ENV_PREFIXES = ("DICOMNODE_DESTINATIONS__", "DICOMNODE_WEB__USERS__", "DICOMNODE_ROUTES__")


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per DICOMNODE_* variable that sets nothing (pydantic-settings ignores them silently),
    naming the variable and the nearest valid one."""
    valid = {_env_name(k) for k in setting_keys() if "NAME" not in k}
    warnings = []
    for name in sorted(environ if environ is not None else os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid or upper.startswith(_OPEN_ENV_PREFIXES):
            continue
        near = difflib.get_close_matches(upper, sorted(valid), n=1, cutoff=0.8)
        hint = f"; did you mean {near[0]}?" if near else " (see `dicomnode config example` for the keys)"
        warnings.append(f"environment variable {name} is not a dicomnode setting and is ignored{hint} "
                        f"(DICOMNODE_<SECTION>__<KEY>, two underscores between section and key)")
    return warnings


def _error_lines(exc: ValidationError, prefix: tuple[str, ...], source: Any) -> list[str]:
    """One line per problem: key, where its value came from, what is wrong (never the value of a secret)."""
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        where = source(loc) if callable(source) else source
        if err["type"] == "extra_forbidden":
            near = nearest_key(re.sub(r"\[\d+\]", "", _key(loc)))
            why = "unknown key" + (f"; did you mean {near}?" if near else "") + \
                " (`dicomnode config example` shows every valid key)"
        else:
            why = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {_key(loc)}: {why} (from {where})")
    return lines


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None,
                  flags: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply env and then CLI overrides ({"node.port": 11113}).

    `flags` names the command-line flag behind each override ({"node.port": "--port"}), so that an
    error blames the flag, not the file; every error names the key and where its value came from.
    """
    data = _read_file(path) if path is not None else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        lines = _error_lines(exc, (), lambda loc: _source_of(loc, path))
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    except SettingsError:
        names = ", ".join(sorted(_env_vars().values())) or "DICOMNODE_*"
        raise ConfigError(f"invalid configuration: an environment variable is not valid JSON for its key "
                          f"(one of {names}); lists and tables are written as JSON, e.g. '[\"10.0.0.0/8\"]'") from None
    problems: list[str] = []
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        try:
            setattr(getattr(settings, section), key, value)
        except ValidationError as exc:
            problems += _error_lines(exc, (section,), (flags or {}).get(dotted, f"the override {dotted}"))
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    return settings
