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


# Values the example route sets that are NOT the defaults of a route an admin writes: they are the
# built-in route's choices (Settings.routes, used when the file has no [[routes]]), and each is
# commented "default: ...; built-in route: ..." in the example. Nothing else may differ.
EXAMPLE_ONLY_ROUTE_VALUES = {
    "name",  # required: no default
    "one_series_per_study",  # default false: every matching series is analysed
    "match.modality",  # default []: any modality
    "match.max_slice_thickness_mm",  # default: no limit
    "match.min_slices",  # default: no minimum
}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_the_example_route_sets_only_defaults_or_commented_built_in_choices() -> None:
    from dicomnode.config import Route

    (route,) = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))["routes"]
    loaded = load_settings(EXAMPLE_CONFIG).routes[0].model_dump()
    written = Route(name="mine").model_dump()  # a route with nothing but its name
    differs = {key for key in _flat(route) if _flat(loaded)[key] != _flat(written)[key]}
    assert differs == EXAMPLE_ONLY_ROUTE_VALUES, f"the example route differs from a route's defaults in {differs}"
    # and the example route is exactly the built-in one it says it is
    assert load_settings(EXAMPLE_CONFIG).routes == Settings().routes


def test_every_example_only_value_is_commented_as_such() -> None:
    """Each built-in choice in the example says what a route of yours gets instead."""
    lines = EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines()
    for key in EXAMPLE_ONLY_ROUTE_VALUES - {"name"}:
        name = key.split(".")[-1]
        (i,) = [i for i, line in enumerate(lines) if re.match(rf"^{name}\s*=", line)]
        said = lines[i] + " " + lines[i - 1]  # the comment is on the line or just above it
        assert "default:" in said.lower() and "built-in route" in said, f"{key} is not marked as a built-in choice"
