"""DICOM instances of one CT series -> an HU volume with its patient geometry (LPS, mm).

`load_volume` accepts classic CT Image Storage (one file per slice, any order) and enhanced /
legacy-converted multi-frame CT (per-frame PlanePositionSequence). Both go through one path: each
frame becomes a `_Slice` record, the records are checked, sorted along the slice normal and
stacked.

Series the detector cannot read correctly are refused with `NotAnalysable`, whose message is the
reason shown to users: non-CT, localizers, mixed series, non-axial or tilted geometry, thick
slices, too few slices, duplicate positions, missing slices and uneven spacing. Missing slices are
refused rather than interpolated: a gap can hide a nodule, and the radiologist should know the
series was incomplete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, SupportsFloat, SupportsInt

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array as decode_pixels

from inference.findings import NotAnalysable

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
_MULTIFRAME_CT = {ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
_ACCEPTED_SOP_CLASSES = {CT_IMAGE_STORAGE} | _MULTIFRAME_CT

AIR_HU = -1024.0


@dataclass(frozen=True)
class VolumeLimits:
    """What the model can read; the node's config may override these."""

    min_slices: int = 16
    max_slice_thickness_mm: float = 3.0
    # slice normal must be within this angle of the patient's head-foot (LPS z) axis
    max_axial_angle_deg: float = 5.0
    # a slice step may differ from the median step by this fraction before the series is refused
    spacing_tolerance: float = 0.1


@dataclass
class Volume:
    """An HU volume indexed (z, y, x) = (slice, row, column), z increasing along the slice normal."""

    hu: np.ndarray  # float32 (z, y, x)
    origin: np.ndarray  # LPS mm of voxel [0, 0, 0]
    spacing: np.ndarray  # (z, y, x) mm
    direction: np.ndarray  # 3x3, columns: unit vectors of the x (column), y (row), z (slice) axes
    sop_instance_uids: list[str]
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_numbers: list[int] | None = None  # 1-based, for multi-frame sources; None for classic CT
    slice_thickness_mm: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def voxel_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (z, y, x), may be fractional -> (N, 3) LPS mm (x, y, z)."""
        zyx = np.asarray(zyx, dtype=np.float64)
        scalar = zyx.ndim == 1
        zyx = np.atleast_2d(zyx)
        # reorder to (x, y, z) index order so the direction columns apply directly
        ijk_mm = zyx[:, ::-1] * self.spacing[::-1]
        xyz = self.origin + ijk_mm @ self.direction.T
        return xyz[0] if scalar else xyz

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm (x, y, z) -> (N, 3) fractional voxel indices (z, y, x)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        scalar = xyz.ndim == 1
        xyz = np.atleast_2d(xyz)
        # direction is orthonormal, so its inverse is its transpose
        ijk_mm = (xyz - self.origin) @ self.direction
        zyx = (ijk_mm / self.spacing[::-1])[:, ::-1]
        return zyx[0] if scalar else zyx

    def slice_reference(self, z_index: int) -> tuple[str, int | None]:
        """SOP Instance UID (and frame number for multi-frame) of one slice."""
        frame = self.frame_numbers[z_index] if self.frame_numbers is not None else None
        return self.sop_instance_uids[z_index], frame


@dataclass
class _Slice:
    """One image plane, from a classic instance or one frame of a multi-frame instance."""

    position: np.ndarray  # ImagePositionPatient
    row_cosine: np.ndarray  # direction of increasing column index
    col_cosine: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    thickness: float | None
    slope: float
    intercept: float
    rows: int
    columns: int
    sop_instance_uid: str
    frame_number: int | None
    pixels: Callable[[], np.ndarray]  # raw stored values, decoded lazily


def load_volume(datasets: Sequence[Dataset], limits: VolumeLimits | None = None) -> Volume:
    """Build a Volume from the datasets of one series; raise NotAnalysable with the reason if unsuitable."""
    limits = limits or VolumeLimits()
    if not datasets:
        raise NotAnalysable("the series holds no images")
    _check_series_identity(datasets)
    slices: list[_Slice] = []
    for ds in datasets:
        slices.extend(_slices_of(ds))
    if len(slices) == 1:
        raise NotAnalysable("the series is a single image (a localizer or scout?), not a CT volume")
    if len(slices) < limits.min_slices:
        raise NotAnalysable(f"the series has {len(slices)} slices; at least {limits.min_slices} are needed")

    first = slices[0]
    _check_consistent(slices)
    normal = np.cross(first.row_cosine, first.col_cosine)
    normal /= np.linalg.norm(normal)
    _check_axial(normal, limits)

    heights = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(heights, kind="stable")
    slices = [slices[i] for i in order]
    heights = heights[order]
    z_step = _check_spacing(slices, heights, normal, limits)

    thickness = first.thickness if first.thickness is not None else z_step
    if thickness > limits.max_slice_thickness_mm + 1e-6:
        raise NotAnalysable(
            f"slices are {thickness:g} mm thick; the model needs {limits.max_slice_thickness_mm:g} mm or thinner"
        )

    hu = np.empty((len(slices), first.rows, first.columns), dtype=np.float32)
    padding = _padding_range(datasets[0])
    for k, s in enumerate(slices):
        raw = s.pixels()
        if raw.shape != (first.rows, first.columns):
            raise NotAnalysable(f"image {s.sop_instance_uid} decodes to shape {raw.shape}, expected {(first.rows, first.columns)}")
        plane = hu[k]
        np.multiply(raw, s.slope, out=plane, casting="unsafe")
        plane += s.intercept
        if padding is not None:
            # padding marks pixels outside the reconstructed field of view: they are air, not data
            plane[(raw >= padding[0]) & (raw <= padding[1])] = AIR_HU

    row_sp, col_sp = first.pixel_spacing
    direction = np.column_stack([first.row_cosine, first.col_cosine, normal])
    ds0 = datasets[0]
    multiframe = first.frame_number is not None
    return Volume(
        hu=hu,
        origin=slices[0].position.astype(np.float64),
        spacing=np.array([z_step, row_sp, col_sp], dtype=np.float64),
        direction=direction,
        sop_instance_uids=[s.sop_instance_uid for s in slices],
        sop_class_uid=str(ds0.SOPClassUID),
        series_instance_uid=str(ds0.SeriesInstanceUID),
        study_instance_uid=str(ds0.get("StudyInstanceUID", "")),
        frame_numbers=[s.frame_number for s in slices if s.frame_number is not None] if multiframe else None,
        slice_thickness_mm=float(thickness),
    )


def _check_series_identity(datasets: Sequence[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise NotAnalysable(f"the images belong to {len(series)} different series; one series is analysed at a time")
    if "" in series:
        raise NotAnalysable("an image has no SeriesInstanceUID")
    modalities = {str(ds.get("Modality", "")) for ds in datasets}
    if modalities != {"CT"}:
        raise NotAnalysable(f"modality is {', '.join(sorted(m or 'missing' for m in modalities))}, not CT")
    classes = {str(ds.get("SOPClassUID", "")) for ds in datasets}
    if len(classes) > 1:
        raise NotAnalysable("the series mixes SOP classes: " + ", ".join(sorted(classes)))
    sop_class = classes.pop()
    if sop_class not in _ACCEPTED_SOP_CLASSES:
        raise NotAnalysable(f"SOP class {sop_class} is not a CT image storage class")
    for ds in datasets:
        if _is_localizer(ds.get("ImageType")):
            raise NotAnalysable("the series is a localizer (scout) image, not an axial CT volume")


def _is_localizer(image_type: str | Iterable[object] | None) -> bool:
    if image_type is None:
        return False
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).upper() == "LOCALIZER" for v in values)


def _slices_of(ds: Dataset) -> list[_Slice]:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NotAnalysable(f"image {ds.get('SOPInstanceUID', '?')} has no pixel data")
    if str(ds.SOPClassUID) in _MULTIFRAME_CT:
        return _frames_of(ds)
    return [_classic_slice(ds)]


# A numeric multi-valued element as pydicom reads it: a MultiValue of DSfloat / float (or str).
_Numbers = Sequence[SupportsFloat | str]


def _require(ds: Dataset, keyword: str, uid: str) -> Any:
    """The element's value; Any because pydicom types element values dynamically (Dataset.get -> Any)."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise NotAnalysable(f"image {uid} lacks {keyword}, so its position in the patient is unknown")
    return value


def _orientation(value: _Numbers, uid: str) -> tuple[np.ndarray, np.ndarray]:
    iop = np.array([float(v) for v in value], dtype=np.float64)
    if iop.shape != (6,):
        raise NotAnalysable(f"image {uid} has a malformed ImageOrientationPatient")
    row, col = iop[:3], iop[3:]
    if not (0.99 < np.linalg.norm(row) < 1.01 and 0.99 < np.linalg.norm(col) < 1.01 and abs(row @ col) < 0.01):
        raise NotAnalysable(f"image {uid} has an ImageOrientationPatient that is not two orthogonal unit vectors")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _deferred_pixel_file(ds: Dataset) -> str | None:
    """The file to decode from when `ds` was read with its pixel data left on disk (dcmread with
    defer_size, as the node's job does): decoding from the file keeps the dataset without its pixel
    bytes (137 MB for lidc-idri-0002 held through detection otherwise); None: decode the dataset."""
    filename = getattr(ds, "filename", None)
    if not isinstance(filename, str) or not filename:
        return None
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            elem = ds.get_item(keyword, keep_deferred=True)
            return filename if elem is not None and elem.value is None else None
    return None


def _decoder(ds: Dataset) -> Callable[[], np.ndarray]:
    """Decode on first use only; a multi-frame instance is decoded once for all its frames."""
    cache: dict[str, np.ndarray] = {}

    def decode() -> np.ndarray:
        if "all" not in cache:
            try:
                # decoded without pydicom's per-dataset cache (ds.pixel_array keeps every slice's array alive
                # with the datasets for the whole job: 137 MB for lidc-idri-0002); same decoder as ds.pixel_array
                file = _deferred_pixel_file(ds)
                cache["all"] = decode_pixels(file) if file is not None else decode_pixels(ds)
            except Exception as exc:  # any decoder error means the same thing to the user
                ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
                name = getattr(ts, "name", "unknown") if ts is not None else "unknown"
                raise NotAnalysable(
                    f"pixel data could not be decoded (transfer syntax {name} {ts or ''}): {exc}".replace("  ", " ")
                ) from exc
        return cache["all"]

    return decode


def _classic_slice(ds: Dataset) -> _Slice:
    uid = str(ds.get("SOPInstanceUID", "?"))
    ipp: _Numbers = _require(ds, "ImagePositionPatient", uid)
    row, col = _orientation(_require(ds, "ImageOrientationPatient", uid), uid)
    spacing: _Numbers = _require(ds, "PixelSpacing", uid)
    thickness = ds.get("SliceThickness")
    return _Slice(
        position=np.array([float(v) for v in ipp], dtype=np.float64),
        row_cosine=row,
        col_cosine=col,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        thickness=float(thickness) if thickness not in (None, "") else None,
        slope=float(ds.get("RescaleSlope", 1) or 1),
        intercept=float(ds.get("RescaleIntercept", 0) or 0),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        sop_instance_uid=uid,
        frame_number=None,
        pixels=_decoder(ds),
    )


def _group_item(ds: Dataset, frame_group: Dataset | None, sequence: str) -> Dataset | None:
    """A functional group item, per-frame first, then shared (either may carry it)."""
    for holder in (frame_group, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and sequence in holder:
            item = _first(holder.get(sequence))
            if item is not None:
                return item
    return None


def _first(seq: Sequence[Dataset] | None) -> Dataset | None:
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _frames_of(ds: Dataset) -> list[_Slice]:
    uid = str(ds.get("SOPInstanceUID", "?"))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise NotAnalysable(f"multi-frame image {uid} lacks a PerFrameFunctionalGroupsSequence item for every frame")
    decode_all = _decoder(ds)
    slices: list[_Slice] = []
    for index, group in enumerate(per_frame):
        frame_type = _group_item(ds, group, "CTImageFrameTypeSequence")
        if frame_type is not None and _is_localizer(frame_type.get("FrameType")):
            raise NotAnalysable("the series is a localizer (scout) image, not an axial CT volume")
        position = _group_item(ds, group, "PlanePositionSequence")
        orientation = _group_item(ds, group, "PlaneOrientationSequence")
        measures = _group_item(ds, group, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise NotAnalysable(f"frame {index + 1} of {uid} lacks its plane position, orientation or pixel spacing")
        row, col = _orientation(_require(orientation, "ImageOrientationPatient", uid), uid)
        spacing: _Numbers = _require(measures, "PixelSpacing", uid)
        thickness = measures.get("SliceThickness")
        transform = _group_item(ds, group, "PixelValueTransformationSequence")
        slope = float(transform.get("RescaleSlope", 1)) if transform is not None else float(ds.get("RescaleSlope", 1) or 1)
        intercept = (
            float(transform.get("RescaleIntercept", 0)) if transform is not None else float(ds.get("RescaleIntercept", 0) or 0)
        )
        ipp: _Numbers = _require(position, "ImagePositionPatient", uid)
        frame_number = index + 1
        slices.append(
            _Slice(
                position=np.array([float(v) for v in ipp], dtype=np.float64),
                row_cosine=row,
                col_cosine=col,
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                thickness=float(thickness) if thickness not in (None, "") else None,
                slope=slope,
                intercept=intercept,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                sop_instance_uid=uid,
                frame_number=frame_number,
                pixels=_frame_decoder(decode_all, frame_number, n_frames),
            )
        )
    return slices


def _frame_decoder(decode_all: Callable[[], np.ndarray], frame_number: int, n_frames: int) -> Callable[[], np.ndarray]:
    """One frame's lazy decoder; a closure per frame, so each keeps its own frame number."""
    return lambda: _frame(decode_all(), frame_number, n_frames)


def _frame(array: np.ndarray, frame_number: int, n_frames: int) -> np.ndarray:
    return array if n_frames == 1 else array[frame_number - 1]


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise NotAnalysable(
                f"images differ in size ({first.rows}x{first.columns} and {s.rows}x{s.columns}); the series is not one volume"
            )
        if np.abs(s.row_cosine - first.row_cosine).max() > 1e-3 or np.abs(s.col_cosine - first.col_cosine).max() > 1e-3:
            raise NotAnalysable("images in the series have different orientations; the series is not one volume")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise NotAnalysable("images in the series have different pixel spacings; the series is not one volume")


def _check_axial(normal: np.ndarray, limits: VolumeLimits) -> None:
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if angle <= limits.max_axial_angle_deg:
        return
    if angle > 45.0:
        plane = "sagittal" if abs(normal[0]) >= abs(normal[1]) else "coronal"
        raise NotAnalysable(f"the images are {plane}, not axial; the model needs axial slices")
    raise NotAnalysable(
        f"the slices are tilted {angle:.1f} degrees from axial (gantry tilt or oblique reconstruction); "
        f"the model needs axial slices within {limits.max_axial_angle_deg:g} degrees"
    )


def _check_spacing(slices: list[_Slice], heights: np.ndarray, normal: np.ndarray, limits: VolumeLimits) -> float:
    steps = np.diff(heights)
    duplicates = np.flatnonzero(steps < 1e-3)
    if duplicates.size:
        k = int(duplicates[0])
        raise NotAnalysable(
            f"{duplicates.size} slice position(s) occur twice (e.g. at {heights[k]:.2f} mm: "
            f"{slices[k].sop_instance_uid} and {slices[k + 1].sop_instance_uid}); the series mixes reconstructions"
        )
    median = float(np.median(steps))
    # the first position sets the line the others must lie on; a sideways drift is a gantry tilt
    offsets = np.array([s.position for s in slices]) - slices[0].position
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(sideways, axis=1)
    extent = max(float(heights[-1] - heights[0]), 1e-6)
    shear_deg = math.degrees(math.atan(float(drift.max()) / extent))
    if drift.max() > 0.5 * median and shear_deg > 1.0:
        raise NotAnalysable(
            f"slice positions drift sideways by {shear_deg:.1f} degrees (gantry tilt); the model needs an untilted axial volume"
        )
    bad = np.flatnonzero(np.abs(steps - median) > limits.spacing_tolerance * median)
    if bad.size:
        k = int(bad[0])
        ratio = steps[k] / median
        if abs(ratio - round(ratio)) < limits.spacing_tolerance and round(ratio) >= 2:
            missing = int(sum(max(0, round(steps[j] / median) - 1) for j in bad))
            raise NotAnalysable(
                f"{missing} slice(s) missing: a gap of {steps[k]:.2f} mm between positions {heights[k]:.2f} and "
                f"{heights[k + 1]:.2f} mm where the spacing is {median:.2f} mm"
            )
        raise NotAnalysable(
            f"slice spacing is uneven ({steps.min():.2f} to {steps.max():.2f} mm, median {median:.2f} mm)"
        )
    return float(np.mean(steps))


def _padding_range(ds: Dataset) -> tuple[float, float] | None:
    """Stored-value range of PixelPaddingValue (..RangeLimit), read in the pixel data's signedness."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits = int(ds.get("BitsAllocated", 16))

    def as_stored(v: SupportsInt | str | bytes) -> int:
        stored = int(v)
        # the tag may be written as US although the pixels are signed: 63536 means -2000 on int16
        if signed and stored >= 1 << (bits - 1):
            stored -= 1 << bits
        return stored

    low = as_stored(value)
    limit = ds.get("PixelPaddingRangeLimit")
    high = as_stored(limit) if limit is not None else low
    return (min(low, high), max(low, high))


def read_series(paths: Sequence[str]) -> list[Dataset]:
    """Read the files of a series (helper for tests and the CLI)."""
    return [pydicom.dcmread(str(p)) for p in paths]
