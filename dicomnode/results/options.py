"""What the result encoders produce and how they label it (docs/architecture.md, "Results encoding")."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# an LO value (PS3.5): 64 characters at most, no backslash (the multi-value separator), no control characters
_LONG_STRING_RE = re.compile(r"^[^\\\x00-\x1f\x7f]{0,64}$")
_MAX_IS = 2**31 - 1  # the largest Integer String (series numbers)


class ResultOptions(BaseModel):
    """Settings for the DICOM objects returned to the PACS.

    Fields that change the encoded content feed `uids.settings_digest`, so changing
    them yields new result UIDs instead of silently overwriting older results.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Comprehensive SR reaches the most viewers (Orthanc Stone reads only this one);
    # the 3D variant adds a SCOORD3D world point per nodule.
    sop_class: Literal["comprehensive", "comprehensive3d"] = "comprehensive"
    send_sr: bool = True
    send_overlays: bool = True
    send_seg: bool = False
    not_analysed_report: bool = True

    # ROI drawn on the key slice: a closed polygon is drawn by every viewer we know.
    roi_graphic: Literal["polyline", "ellipse"] = "polyline"
    polygon_vertices: int = Field(default=32, ge=8, le=360)
    # Unused since issue 11: the SR no longer codes Benign/Malignant from the phantom-trained model score
    # (the Brock risk and Lung-RADS are encoded instead). Kept so existing [results] settings still parse.
    malignancy_threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    sr_series_number: int = Field(default=9001, ge=1, le=_MAX_IS)
    overlay_series_number: int = Field(default=9002, ge=1, le=_MAX_IS)
    seg_series_number: int = Field(default=9003, ge=1, le=_MAX_IS)
    sr_series_description: str = "Lung nodule CAD report"
    overlay_series_description: str = "Lung nodule overlays - NOT FOR DIAGNOSTIC USE"
    seg_series_description: str = "Lung nodule segmentation - NOT FOR DIAGNOSTIC USE"

    manufacturer: str = "dicomnode"
    institution_name: str | None = None
    device_name: str = "dicomnode"
    # None: UIDs are 2.25.<UUID derived from a hash>; set an organisation root to use it.
    uid_root: str | None = None

    # lung window for the secondary-capture overlays
    window_center: float = -600.0
    window_width: float = Field(default=1500.0, gt=0)

    @field_validator("sr_series_description", "overlay_series_description", "seg_series_description",
                     "manufacturer", "institution_name", "device_name")
    @classmethod
    def _long_string(cls, value: str | None) -> str | None:
        # written into every result object: a bad value would make invalid DICOM for every series
        if value is not None and not _LONG_STRING_RE.match(value):
            raise ValueError("must be at most 64 characters with no backslash or control characters (DICOM LO)")
        return value

    @field_validator("overlay_series_description")
    @classmethod
    def _overlay_says_not_diagnostic(cls, value: str) -> str:
        # burned-in overlays must never be mistaken for the diagnostic images
        if "not for diagnostic" not in value.lower():
            raise ValueError("overlay_series_description must state NOT FOR DIAGNOSTIC USE")
        return value

    @field_validator("uid_root")
    @classmethod
    def _root_is_uid_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.endswith("."):
            value += "."
        parts = value[:-1].split(".")
        if len(value) > 40 or not all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts):
            raise ValueError("uid_root must be a dotted numeric UID prefix of at most 40 characters")
        return value
