"""The source CT datasets as the result builders use them: copied with the Type 2 attributes highdicom needs,
sorted along the slice normal, looked up by SOP Instance UID; a finding's half-axes in a slice's pixels."""
from __future__ import annotations

from collections.abc import Sequence
from copy import copy, deepcopy

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from inference.findings import Finding


# Required (Type 2) patient/study attributes highdicom reads from the first source dataset.
_TYPE2_FROM_SOURCE = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


PIXEL_DATA = Tag(0x7FE0, 0x0010)


def prepare_sources(source: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source datasets with the Type 2 attributes highdicom needs present.

    Elements are copied, not shared: highdicom carries source elements into the results, and a
    shared element would let a later change to a result (or to another result built from the same
    sources) write into the caller's CT datasets. Pixel data alone is shared: it is large and
    never modified here. Sorted by position along the normal.
    """
    if not source:
        raise ValueError("no source datasets")
    prepared = []
    for ds in source:
        prepared_ds = Dataset()
        for elem in ds:
            prepared_ds.add(elem if elem.tag == PIXEL_DATA else _unshared(elem))
        if hasattr(ds, "file_meta"):
            prepared_ds.file_meta = ds.file_meta
        for keyword in _TYPE2_FROM_SOURCE:
            if keyword not in prepared_ds:
                setattr(prepared_ds, keyword, None)
        prepared.append(prepared_ds)
    return sort_by_position(prepared)


def _unshared(elem: DataElement) -> DataElement:
    """A copy of `elem` through which no change reaches the original. Only values that can change in place
    (multi-valued elements, sequences) are copied deeply; strings, numbers, bytes and person names cannot,
    and a new element holding them is enough (deep-copying every element took half a second more per
    261-slice series, and most of the SR tests' time)."""
    if elem.VR == "SQ" or isinstance(elem.value, MultiValue):
        return deepcopy(elem)
    return copy(elem)


def sort_by_position(datasets: list[Dataset]) -> list[Dataset]:
    def position(ds: Dataset) -> float:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return float(ds.get("InstanceNumber", 0) or 0)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))

    return sorted(datasets, key=position)


def find_instance(sources: Sequence[Dataset], sop_instance_uid: str) -> Dataset:
    for ds in sources:
        if ds.SOPInstanceUID == sop_instance_uid:
            return ds
    raise ValueError(f"key slice {sop_instance_uid} is not in the source series")


def radius_px(finding: Finding, image: Dataset) -> tuple[float, float]:
    """In-plane half-axes in pixels; from the diameter when the model gave none."""
    r_row, r_col = finding.radius_px
    if r_row > 0 and r_col > 0:
        return float(r_row), float(r_col)
    spacing = [float(v) for v in image.PixelSpacing]  # row spacing, column spacing
    half = max(finding.diameter_mm, 1.0) / 2.0
    return half / spacing[0], half / spacing[1]
