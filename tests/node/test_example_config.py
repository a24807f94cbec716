"""node.example.toml documents every configuration key, in its section, with the default the code uses.

The drift test for the configuration, as tests/web/test_conformance.py is for the conformance
statement: a key added to the settings model must be added to the example too.
"""
from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from pydantic import BaseModel

from dicomnode.config import EXAMPLE_CONFIG, Settings, load_settings

# sections whose keys belong to an entry of a list or table the admin names ([[routes]], [destinations.X])
_ENTRY_SECTIONS = {"routes": "routes", "routes.match": "routes.match", "destinations": "destinations.PACS"}


def _model_keys(model: type[BaseModel], prefix: str) -> list[tuple[str, str]]:
    """(section, key) for every leaf setting of a model; nested models are their own sections."""
    keys: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _model_keys(annotation, f"{prefix}.{name}" if prefix else name)
        else:
            keys.append((prefix, name))
    return keys


def _all_keys() -> list[tuple[str, str]]:
    from dicomnode.config import Destination, Route

    keys: list[tuple[str, str]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _model_keys(annotation, name)
    return keys + _model_keys(Route, "routes") + _model_keys(Destination, "destinations")


def _documented_sections() -> dict[str, set[str]]:
    """Keys per section header, commented-out ones included ('# key = value')."""
    sections: dict[str, set[str]] = {}
    current = ""
    for line in EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines():
        header = re.match(r"^#?\s*\[\[?([A-Za-z0-9_.]+)\]\]?\s*$", line)
        if header:
            current = header.group(1)
            continue
        key = re.match(r"^#?\s*([a-z_0-9]+)\s*=", line)
        if key:
            sections.setdefault(current, set()).add(key.group(1))
    return sections


@pytest.mark.parametrize(("section", "key"), _all_keys(), ids=lambda v: str(v))
def test_every_key_is_documented_in_its_section(section: str, key: str) -> None:
    documented = _documented_sections()
    where = _ENTRY_SECTIONS.get(section, section)
    assert key in documented.get(where, set()), f"{section}.{key} is not documented in [{where}] of {EXAMPLE_CONFIG.name}"


def test_the_example_parses_and_its_values_are_the_defaults() -> None:
    """Uncommented values in the example are the code's defaults (routes are an example, not a default)."""
    example = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    settings = load_settings(EXAMPLE_CONFIG)
    defaults = Settings()

    def compare(data: dict[str, Any], loaded: BaseModel, default: BaseModel, path: str) -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                compare(value, getattr(loaded, key), getattr(default, key), f"{path}.{key}")
            else:
                assert getattr(loaded, key) == getattr(default, key), f"{path}.{key}: example {value!r} is not the default"

    for section, data in example.items():
        if section in ("routes", "destinations"):
            continue
        compare(data, getattr(settings, section), getattr(defaults, section), section)
