"""Optional DICOM SEG of the nodules: one BINARY segment per nodule (docs/architecture.md, "Results encoding").

Each nodule is rasterised as a sphere of its reported diameter directly in each source
slice's own geometry (ImagePositionPatient / ImageOrientationPatient / PixelSpacing), so
no volume reconstruction is needed and oblique or unevenly spaced series still work.
Segment tracking UIDs equal the SR tracking UIDs, so viewers can link the two.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.results.options import ResultOptions
from dicomnode.results.equipment import algorithm_device_uid, contributing_equipment
from dicomnode.results.sources import prepare_sources
from dicomnode.results.sr_codes import LUNG, MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NODULE
from dicomnode.results.sr_follow_up import nodule_tracking
from dicomnode.results.uids import result_uid, settings_digest
from inference.findings import Finding, SeriesResult


def sphere_mask(ct_slice: Dataset, center_mm: Sequence[float], diameter_mm: float) -> np.ndarray:
    """Boolean Rows x Columns mask of the sphere's cross-section with this slice's plane."""
    rows, cols = int(ct_slice.Rows), int(ct_slice.Columns)
    mask = np.zeros((rows, cols), dtype=bool)
    iop = np.asarray(ct_slice.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column, increasing row
    normal = np.cross(row_dir, col_dir)
    row_spacing, col_spacing = (float(v) for v in ct_slice.PixelSpacing)
    offset = np.asarray(center_mm, dtype=float) - np.asarray(ct_slice.ImagePositionPatient, dtype=float)
    radius = diameter_mm / 2.0
    distance = float(np.dot(offset, normal))
    if abs(distance) > radius:
        return mask
    in_plane = np.sqrt(radius**2 - distance**2)
    c0 = float(np.dot(offset, row_dir)) / col_spacing
    r0 = float(np.dot(offset, col_dir)) / row_spacing
    # only the bounding box of the disc is evaluated
    r_lo, r_hi = max(int(np.floor(r0 - in_plane / row_spacing)), 0), min(int(np.ceil(r0 + in_plane / row_spacing)), rows - 1)
    c_lo, c_hi = max(int(np.floor(c0 - in_plane / col_spacing)), 0), min(int(np.ceil(c0 + in_plane / col_spacing)), cols - 1)
    if r_lo > r_hi or c_lo > c_hi:
        return mask
    rr, cc = np.mgrid[r_lo : r_hi + 1, c_lo : c_hi + 1]
    inside = ((rr - r0) * row_spacing) ** 2 + ((cc - c0) * col_spacing) ** 2 <= in_plane**2
    mask[r_lo : r_hi + 1, c_lo : c_hi + 1] = inside
    return mask


def _plane_distance(ct_slice: Dataset, point: Sequence[float]) -> float:
    iop = np.asarray(ct_slice.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(np.asarray(point, dtype=float) - np.asarray(ct_slice.ImagePositionPatient, dtype=float), normal))


def touched_slices(sources: Sequence[Dataset], findings: Sequence[Finding]) -> list[int]:
    """Indices of the slices whose plane cuts at least one nodule sphere."""
    return [
        i
        for i, ct_slice in enumerate(sources)
        if any(abs(_plane_distance(ct_slice, f.center_mm)) <= max(f.diameter_mm, 1.0) / 2.0 for f in findings)
    ]


def nodule_masks(sources: Sequence[Dataset], findings: Sequence[Finding]) -> np.ndarray:
    """Frames x Rows x Columns x Segments boolean array over the given slices."""
    first = sources[0]
    masks = np.zeros((len(sources), int(first.Rows), int(first.Columns), len(findings)), dtype=bool)
    for s, finding in enumerate(findings):
        for f, ct_slice in enumerate(sources):
            masks[f, :, :, s] = sphere_mask(ct_slice, finding.center_mm, max(finding.diameter_mm, 1.0))
    return masks


def _tracking(index: int, result: SeriesResult, options: ResultOptions, digest: str) -> tuple[str, str]:
    """(Tracking UID, Tracking ID) of a nodule, taken from its SR tracking identifier items."""
    text, uidref = nodule_tracking(index, result, options, digest)
    return str(uidref.UID), str(text.TextValue)


def build_seg(
    source: Sequence[Dataset], result: SeriesResult, options: ResultOptions | None = None
) -> Dataset | None:
    """SEG with one segment per nodule, or None when there is nothing to segment."""
    options = options or ResultOptions()
    if not result.findings:
        return None
    sources = prepare_sources(source)
    # Only the slices a nodule touches are encoded (and referenced as source images).
    used = [sources[i] for i in touched_slices(sources, result.findings)]
    if not used:
        return None
    masks = nodule_masks(used, result.findings)
    digest = settings_digest(options)
    root = options.uid_root
    model = result.model
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        parameters={"weights_sha256": model.weights_sha256, "engine": model.engine},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=f"Lung nodule {i + 1}",
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=NODULE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            # the same Tracking ID/UID as the nodule's SR groups (IHE AIR, TID 1411)
            tracking_uid=tracking_uid,
            tracking_id=tracking_id,
            anatomic_regions=[LUNG],
        )
        for i, (tracking_uid, tracking_id) in enumerate(
            _tracking(i, result, options, digest) for i in range(len(result.findings))
        )
    ]
    seg = hd.seg.Segmentation(
        source_images=used,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=result_uid("seg-series", result.series_instance_uid, model.version, digest, 0, root),
        series_number=options.seg_series_number,
        sop_instance_uid=result_uid("seg-instance", result.series_instance_uid, model.version, digest, 0, root),
        instance_number=1,
        manufacturer=options.manufacturer,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=algorithm_device_uid(model, options),
        contributing_equipment=[contributing_equipment(model, options)],
        series_description=options.seg_series_description,
        content_label="NODULES",
        content_description="Lung nodules as spheres of the reported diameter",
        institution_name=options.institution_name,
    )
    for keyword in ("StudyDescription", "BodyPartExamined"):
        if keyword in sources[0]:
            setattr(seg, keyword, sources[0].get(keyword))
    return seg
