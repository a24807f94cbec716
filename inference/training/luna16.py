"""LUNA16: a folder of subset*/*.mhd scans plus annotations.csv, read with SimpleITK, cached as cases."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inference.training.cases import Progress, case_from_volume

if TYPE_CHECKING:
    from inference.volume import Volume


class MissingPackage(RuntimeError):
    """An optional package the requested data needs is not installed; the message says which."""


def _require_sitk() -> None:
    """Fail with the install hint when SimpleITK, an optional package, is missing."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        raise MissingPackage("reading LUNA16 .mhd files needs SimpleITK: pip install -c constraints.txt SimpleITK") from None


def read_mhd_volume(path: str | Path) -> Volume:
    """A .mhd/.raw CT as an `inference.volume.Volume` (HU float32, LPS geometry as ITK stores it)."""
    from inference.volume import CT_IMAGE_STORAGE, Volume

    _require_sitk()
    import SimpleITK as sitk  # noqa: N813
    img = sitk.ReadImage(str(path))
    hu = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x)
    spacing = np.asarray(img.GetSpacing(), float)[::-1]  # ITK gives x, y, z
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)  # columns: x, y, z axes
    uid = Path(path).stem
    return Volume(
        hu=hu, origin=np.asarray(img.GetOrigin(), float), spacing=spacing, direction=direction,
        sop_instance_uids=[f"{uid}.{k}" for k in range(hu.shape[0])], sop_class_uid=CT_IMAGE_STORAGE,
        series_instance_uid=uid, study_instance_uid=uid,
    )


def luna16_cases(folder: str | Path, cache_dir: str | Path, limit: int | None = None,
                 progress: Progress | None = None) -> list[Path]:
    """Cache every scan of a LUNA16 folder (subset*/*.mhd + annotations.csv) as a training case."""
    folder = Path(folder)
    ann = folder / "annotations.csv"
    if not ann.is_file():
        raise FileNotFoundError(f"{folder}: no annotations.csv (LUNA16 layout: subset*/*.mhd + annotations.csv)")
    scans = sorted(folder.glob("subset*/*.mhd"))
    if not scans:
        raise FileNotFoundError(f"{folder}: no subset*/*.mhd scans")
    _require_sitk()
    by_uid: dict[str, list[tuple[tuple[float, float, float], float, int]]] = {}
    with ann.open(newline="") as f:
        for row in csv.DictReader(f):
            centre = (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"]))
            by_uid.setdefault(row["seriesuid"], []).append((centre, float(row["diameter_mm"]), -1))
    scans = scans[:limit] if limit else scans
    cache = Path(cache_dir)
    paths = []
    for i, mhd in enumerate(scans):
        path = cache / f"luna16-{mhd.stem}.npz"
        if not path.is_file():
            case_from_volume(mhd.stem, read_mhd_volume(mhd), by_uid.get(mhd.stem, []),
                             np.random.default_rng(i)).save(path)
        paths.append(path)
        if progress:
            progress("luna16", i + 1, len(scans))
    return paths
