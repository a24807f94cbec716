"""Findings -> DICOM: TID 1500 SR, secondary-capture overlays, optional SEG (docs/architecture.md, "Results encoding").

The names are loaded on first use (PEP 562): the config imports `results.options`, and a receiver
process, which never encodes results, should not pay for highdicom and the overlay renderer at start.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomnode.results.build import build_results
    from dicomnode.results.options import ResultOptions
    from dicomnode.results.overlay import build_overlays, render_overlay_png
    from dicomnode.results.seg import build_seg
    from dicomnode.results.sr import build_not_analysed_sr, build_sr
    from dicomnode.results.uids import result_uid, settings_digest

_WHERE = {
    "build_results": "build",
    "ResultOptions": "options",
    "build_overlays": "overlay",
    "render_overlay_png": "overlay",
    "build_seg": "seg",
    "build_not_analysed_sr": "sr",
    "build_sr": "sr",
    "result_uid": "uids",
    "settings_digest": "uids",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
