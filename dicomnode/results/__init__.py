"""Findings -> DICOM: TID 1500 SR, secondary-capture overlays, optional SEG (docs/architecture.md, "Results encoding")."""
from dicomnode.results.build import build_results
from dicomnode.results.options import ResultOptions
from dicomnode.results.overlay import build_overlays, render_overlay_png
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_not_analysed_sr, build_sr
from dicomnode.results.uids import result_uid, settings_digest

__all__ = [
    "ResultOptions",
    "build_not_analysed_sr",
    "build_overlays",
    "build_results",
    "build_seg",
    "build_sr",
    "render_overlay_png",
    "result_uid",
    "settings_digest",
]
