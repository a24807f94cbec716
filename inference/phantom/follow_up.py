"""Follow-up phantoms: the same synthetic patient months later, for testing the comparison with a prior.

`write_follow_up_series(out, seed, prior_seed, months)` rebuilds the prior phantom's anatomy (seed
`prior_seed`, same options) and scans it again:
- the patient lies differently on the table: a known rigid motion (a translation of tens of mm and a
  rotation of a few degrees about the head-foot axis) maps prior patient coordinates to current ones;
- the scanner frame differs: another field of view (pixel spacing) and table start;
- the nodules change by a fixed plan on their size rank (largest first): rank 0 grows x2.0 in volume,
  rank 1 is stable, rank 2 resolves, further ones grow x3.0, x1.6, x3.0, ...; one new solid 7 mm nodule
  appears in aerated lung away from the others.
The series carries the prior's PatientID, PatientName and PatientBirthDate, a StudyDate `months` later,
and new UIDs; `truth.json` beside it lists per nodule its status, prior id (index in the prior's
truth.json), current centre in current patient coordinates, prior/current true volume (the painted
shape, `nodule_volume_mm3`), and the true volume doubling time (days) of growing nodules.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Unpack

import numpy as np
from scipy import ndimage

from inference.phantom.build import PhantomOptions, _add_noise, _scene
from inference.phantom.drawing import _Grid
from inference.phantom.model import Phantom, PhantomCase, PhantomNodule
from inference.phantom.nodules import _place_nodules, nodule_volume_mm3, paint_nodule
from inference.phantom.series import _slice_dataset, _uid, slice_geometry

DAYS_PER_MONTH = 365.25 / 12
GROWTH_FACTORS = (3.0, 1.6)  # volume factors of the nodules after the first three, in turn
NEW_NODULE_MM = 7.0  # a new solid nodule 6 to < 8 mm: Lung-RADS v2022 4A


def follow_up_motion(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The known rigid motion (R, t) of the patient: current = R @ prior + t (LPS mm), drawn from `seed`:
    a 1-3 degree rotation about z and a translation of 10-40 mm along each axis (table position)."""
    rng = np.random.default_rng([seed, 104729])
    angle = math.radians(float(rng.uniform(1.0, 3.0)) * float(rng.choice([-1.0, 1.0])))
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    translation = rng.uniform(10.0, 40.0, 3) * rng.choice([-1.0, 1.0], 3)
    translation[1] = np.sign(translation[1]) * min(abs(translation[1]), 15.0)  # the table height moves less
    return rotation, translation


def _plan(nodules: list[PhantomNodule]) -> list[tuple[str, float]]:
    """(status, volume factor) per prior nodule, by size rank (see the module docstring)."""
    order = sorted(range(len(nodules)), key=lambda i: -nodules[i].diameter_mm)
    plan: list[tuple[str, float]] = [("growing", 1.0)] * len(nodules)
    for rank, i in enumerate(order):
        if rank == 0:
            plan[i] = ("growing", 2.0)
        elif rank == 1:
            plan[i] = ("stable", 1.0)
        elif rank == 2:
            plan[i] = ("resolved", 0.0)
        else:
            plan[i] = ("growing", GROWTH_FACTORS[(rank - 3) % len(GROWTH_FACTORS)])
    return plan


def _grown(nodule: PhantomNodule, factor: float, centre: np.ndarray) -> PhantomNodule:
    scale = factor ** (1 / 3)
    return replace(nodule, center_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
                   diameter_mm=nodule.diameter_mm * scale, solid_diameter_mm=nodule.solid_diameter_mm * scale)


def _new_nodule(scene_hu: np.ndarray, label: np.ndarray, coarse: _Grid, existing: list[PhantomNodule],
                rng: np.random.Generator) -> PhantomNodule | None:
    """A new smooth solid nodule (prior patient coordinates) in aerated lung, 10 mm clear of the others."""
    inside = (label > 0) & (scene_hu < -600)
    z, y, x = coarse.axes()
    for n in existing:
        c = np.asarray(n.center_mm)
        far = n.diameter_mm / 2 + NEW_NODULE_MM / 2 + 10.0
        zz, yy, xx = np.ix_(np.abs(z - c[2]) < far, np.abs(y - c[1]) < far, np.abs(x - c[0]) < far)
        inside[zz, yy, xx] = False
    spec = {"kind": "solid", "diameter_mm": NEW_NODULE_MM, "malignant": True, "margin": "smooth",
            "calcified": False, "solid_diameter_mm": NEW_NODULE_MM, "attached_to": None,
            "shape_seed": int(rng.integers(0, 2**31 - 1))}
    placed = _place_nodules([spec], inside, coarse, [], rng)  # type: ignore[list-item]
    return placed[0] if placed else None


def make_follow_up(seed: int, prior_seed: int, months: float, **options: Unpack[PhantomOptions]) -> tuple[Phantom, list[dict[str, Any]]]:
    """The follow-up phantom (current frame) and the per-nodule truth records (see the module docstring)."""
    if not 0 < months <= 60:
        raise ValueError(f"months must be in (0, 60], got {months!r}")
    if seed == prior_seed:
        raise ValueError("the follow-up seed must differ from the prior's (it draws the motion and the noise)")
    scene = _scene(prior_seed, small=bool(options.get("small", False)), matrix=options.get("matrix"),
                   n_slices=options.get("n_slices"), pixel_spacing_mm=options.get("pixel_spacing_mm"),
                   slice_spacing_mm=options.get("slice_spacing_mm"), slice_thickness_mm=options.get("slice_thickness_mm"),
                   patient_position=options.get("patient_position"), origin_offset_mm=options.get("origin_offset_mm"),
                   n_nodules=options.get("n_nodules"))
    rng = np.random.default_rng([seed, prior_seed])
    rotation, translation = follow_up_motion(seed)
    prior_fine = scene.fine
    # the current scan: another field of view (pixel spacing x0.9-1.1) centred on the moved patient
    ps = float(prior_fine.spacing[1]) * float(rng.uniform(0.9, 1.1))
    extent = (np.array(prior_fine.shape) - 1) * prior_fine.spacing  # z, y, x mm
    n_slices = int(round(extent[0] / prior_fine.spacing[0])) + 1
    spacing = np.array([prior_fine.spacing[0], ps, ps])
    matrix = prior_fine.shape[1]
    centre_prior = prior_fine.origin + extent[::-1] / 2
    centre = rotation @ centre_prior + translation + np.array([0.0, 0.0, float(rng.uniform(-6, 6))])
    origin = centre - (np.array([matrix, matrix, n_slices]) - 1) * spacing[::-1] / 2
    grid = _Grid(origin=origin, spacing=spacing, shape=(n_slices, matrix, matrix))
    hu = _resample_anatomy(scene.coarse_hu, scene.coarse, grid, rotation, translation)

    interval_days = int(round(months * DAYS_PER_MONTH))  # whole days, as the StudyDates differ
    truth: list[dict[str, Any]] = []
    current: list[PhantomNodule] = []
    for i, (nodule, (status, factor)) in enumerate(zip(scene.nodules, _plan(scene.nodules))):
        v_prior = nodule_volume_mm3(nodule)
        record: dict[str, Any] = {"prior_id": i, "status": status, "kind": nodule.kind,
                                  "prior_center_mm": [round(c, 3) for c in nodule.center_mm],
                                  "prior_diameter_mm": round(nodule.diameter_mm, 3),
                                  "prior_volume_mm3": round(v_prior, 1), "volume_factor": factor}
        if status != "resolved":
            moved = _grown(nodule, factor, rotation @ np.asarray(nodule.center_mm) + translation)
            v_now = nodule_volume_mm3(moved)
            current.append(moved)
            record.update(center_mm=[round(c, 3) for c in moved.center_mm], diameter_mm=round(moved.diameter_mm, 3),
                          volume_mm3=round(v_now, 1),
                          doubling_time_days=(round(interval_days * math.log(2) / math.log(v_now / v_prior), 1)
                                              if status == "growing" else None))
        truth.append(record)
    new = _new_nodule(scene.coarse_hu, scene.label, scene.coarse, scene.nodules, rng)
    if new is not None:
        moved = replace(new, center_mm=tuple(float(v) for v in rotation @ np.asarray(new.center_mm) + translation))  # type: ignore[arg-type]
        current.append(moved)
        truth.append({"prior_id": None, "status": "new", "kind": "solid",
                      "center_mm": [round(c, 3) for c in moved.center_mm], "diameter_mm": NEW_NODULE_MM,
                      "volume_mm3": round(nodule_volume_mm3(moved), 1), "doubling_time_days": None})
    for nodule in current:
        paint_nodule(hu, grid.origin, grid.spacing, np.eye(3), nodule)
    _add_noise(hu, rng)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    phantom = Phantom(hu=hu.astype(np.int16), origin=grid.origin, spacing=grid.spacing,
                      slice_thickness_mm=scene.thickness, patient_position=scene.position, nodules=current, seed=seed)
    return phantom, truth


def _resample_anatomy(coarse_hu: np.ndarray, coarse: _Grid, grid: _Grid, rotation: np.ndarray,
                      translation: np.ndarray) -> np.ndarray:
    """The prior's coarse anatomy seen in the current frame: each current voxel q samples the prior at
    R^T (q - t), trilinearly (the same blur as the prior's upsampling), slice by slice to bound memory."""
    n, rows, cols = grid.shape
    z, y, x = grid.axes()
    yy, xx = np.meshgrid(y.astype(np.float64), x.astype(np.float64), indexing="ij")
    out = np.empty(grid.shape, np.float32)
    for k in range(n):
        q = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, float(z[k]))], axis=1)
        p = (q - translation) @ rotation  # R^T (q - t) for row vectors
        idx = ((p - coarse.origin) / coarse.spacing[::-1])[:, ::-1].T  # (3, N) z, y, x
        out[k] = ndimage.map_coordinates(coarse_hu, idx, order=1, mode="nearest").reshape(rows, cols)
    return out


def write_follow_up_series(out_dir: str | Path, seed: int, prior_seed: int, months: float,
                           **options: Unpack[PhantomOptions]) -> PhantomCase:
    """Write the follow-up of `prior_seed` (written by `write_phantom_series(prior_seed, **options)`) as a CT
    series plus truth.json: same patient (ID, name, birth date), StudyDate `months` later, new UIDs."""
    phantom, nodules = make_follow_up(seed, prior_seed, months, **options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = json.dumps({"follow_up_of": prior_seed, "months": months, **options}, sort_keys=True, default=str)
    study_uid, series_uid, frame_uid = (_uid(seed, key, part) for part in ("study", "series", "frame"))
    # the prior's patient: the same draws write_phantom_series makes from prior_seed
    prng = np.random.default_rng(prior_seed + 7919)
    sex = str(prng.choice(["M", "F"]))
    age = int(prng.integers(50, 80))
    prior_day = date(2024, 1, 1) + timedelta(days=int(prng.integers(0, 365)))
    birth = date(prior_day.year - age, int(prng.integers(1, 13)), int(prng.integers(1, 29)))
    study_day = prior_day + timedelta(days=int(round(months * DAYS_PER_MONTH)))
    age = study_day.year - birth.year - ((study_day.month, study_day.day) < (birth.month, birth.day))

    n, rows, cols = phantom.hu.shape
    ffs = phantom.patient_position == "FFS"
    stored = (phantom.hu.astype(np.int32) + 1024).astype(np.int16)
    files = []
    for instance, k in enumerate(np.arange(n) if ffs else np.arange(n)[::-1], start=1):
        iop, ipp, pixels = slice_geometry(phantom, stored, int(k))
        ds = _slice_dataset(
            seed=prior_seed, key=key, instance=instance, pixels=np.ascontiguousarray(pixels), iop=iop, ipp=ipp,
            phantom=phantom, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, sex=sex, age=age,
            birth=birth, study_day=study_day, intercept=-1024.0, padding=False,
        )
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, key, "instance", instance)
        ds.AccessionNumber = f"PH{seed:08d}"
        ds.StudyID = f"{seed % 100000}"
        path = out / f"CT{instance:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    rotation, translation = follow_up_motion(seed)
    truth = {
        "seed": seed, "follow_up_of": prior_seed, "months": months, "options": json.loads(key),
        "study_instance_uid": study_uid, "series_instance_uid": series_uid, "study_date": study_day.strftime("%Y%m%d"),
        "prior_study_date": prior_day.strftime("%Y%m%d"), "interval_days": (study_day - prior_day).days,
        "patient_position": phantom.patient_position, "shape_zyx": list(phantom.hu.shape),
        "origin_lps_mm": [round(float(v), 4) for v in phantom.origin],
        "spacing_zyx_mm": [round(float(v), 5) for v in phantom.spacing],
        # current = rotation @ prior + translation (patient LPS mm)
        "prior_to_current": {"rotation": rotation.round(8).tolist(), "translation_mm": translation.round(4).tolist()},
        "nodules": nodules,
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=2))
    return PhantomCase(out, files, truth_path, phantom, study_uid, series_uid)
