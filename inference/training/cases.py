"""Cases: preprocessed images with nodules in preprocessed voxel coordinates.

Data: synthetic phantoms (`inference.phantom`, deterministic by seed) or a LUNA16 folder
(`inference.training.luna16`). Every case is preprocessed once (`inference.preprocess`) and cached
as .npz (uint8 image at 1 mm, lung voxel sample, nodules in preprocessed voxel coordinates), so
the training loop only crops arrays and runs the network.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from inference.phantom.model import Phantom
    from inference.volume import Volume

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Case:
    name: str
    image: np.ndarray  # uint8 (z, y, x), 1 mm, DeepLung preprocessing
    nodules: np.ndarray  # (N, 4) float: z, y, x, diameter (preprocessed voxels == mm)
    malignant: np.ndarray  # (N,) int8: 1 malignant, 0 benign, -1 unknown
    lung_points: np.ndarray  # (M, 3) int: a sample of lung voxels, where negative crops centre

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, image=self.image, nodules=self.nodules, malignant=self.malignant,
                            lung_points=self.lung_points, name=np.array(self.name))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Case":
        with np.load(path) as z:
            return cls(str(z["name"]), z["image"], z["nodules"], z["malignant"], z["lung_points"])


def volume_from_phantom(ph: Phantom) -> Volume:
    """The phantom as the series Volume a scanner would send (what preprocess and the pipeline take)."""
    from inference.volume import CT_IMAGE_STORAGE, Volume

    n = ph.hu.shape[0]
    return Volume(
        hu=ph.hu.astype(np.float32), origin=np.asarray(ph.origin, float), spacing=np.asarray(ph.spacing, float),
        direction=np.asarray(ph.direction, float), sop_instance_uids=[f"1.2.3.{ph.seed}.{k}" for k in range(n)],
        sop_class_uid=CT_IMAGE_STORAGE, series_instance_uid=f"1.2.3.{ph.seed}", study_instance_uid=f"1.2.3.{ph.seed}.0",
    )


def case_from_volume(name: str, volume: Volume, nodules_world: Sequence[tuple[Sequence[float], float, int]],
                     rng: np.random.Generator, n_lung_points: int = 4000) -> Case:
    """Preprocess `volume` turned to LPS, as the pipeline reads a series (inference.orientation: a phantom is in LPS
    already; a scan stored another way round trains what the detector will see), and map nodules ((x, y, z) mm,
    diameter mm, malignant 1/0/-1) into its frame."""
    from inference.orientation import lps_view
    from inference.preprocess import preprocess

    volume = lps_view(volume).volume
    pre = preprocess(volume)
    rows = []
    labels = []
    for centre, diameter, malignant in nodules_world:
        src = volume.world_to_voxel(np.asarray(centre, float))
        zyx = pre.from_source_voxel(src)
        rows.append([*zyx, float(diameter)])
        labels.append(int(malignant))
    lung = np.argwhere(pre.mask)
    if len(lung) == 0:
        lung = np.argwhere(np.ones(pre.image.shape, bool)[::4, ::4, ::4]) * 4
    pick = rng.choice(len(lung), size=min(n_lung_points, len(lung)), replace=False)
    return Case(
        name=name, image=pre.image, nodules=np.asarray(rows, float).reshape(-1, 4),
        malignant=np.asarray(labels, np.int8), lung_points=lung[np.sort(pick)].astype(np.int32),
    )


def phantom_case(seed: int, small: bool = True) -> Case:
    """The phantom of `seed`, preprocessed like a real series."""
    from inference.phantom import make_phantom

    ph = make_phantom(seed, small=small)
    nodules = [(n.center_mm, n.diameter_mm, int(n.malignant)) for n in ph.nodules]
    return case_from_volume(f"phantom-{seed}{'-small' if small else ''}", volume_from_phantom(ph), nodules,
                            np.random.default_rng(seed))


def _build_phantom(args: tuple[int, bool, str]) -> str:
    seed, small, path = args
    phantom_case(seed, small).save(Path(path))
    return path


def cached_phantom_cases(seeds: Sequence[int], cache_dir: str | Path, small: bool = True,
                         progress: Progress | None = None, workers: int = 1) -> list[Path]:
    """Build (once) and return the .npz paths of the phantoms of `seeds`; `workers` > 1 builds in processes."""
    cache = Path(cache_dir)
    paths = [cache / f"phantom-{seed}{'-small' if small else ''}.npz" for seed in seeds]
    todo = [(seed, small, str(p)) for seed, p in zip(seeds, paths) if not p.is_file()]
    done = len(paths) - len(todo)
    if progress:
        progress("phantoms", done, len(paths))
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool (an
        # engine loaded before the cache was built) hangs in its first parallel torch op
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_build_phantom, todo):
                done += 1
                if progress:
                    progress("phantoms", done, len(paths))
    else:
        for item in todo:
            _build_phantom(item)
            done += 1
            if progress:
                progress("phantoms", done, len(paths))
    return paths


def phantom_seeds_from_command_line(argv: list[str] | None, description: str | None) -> tuple[range, bool]:
    """The seeds and size (small: True) of a phantom-wide evaluation's command line: --count, --first-seed,
    --full-size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=20000)
    parser.add_argument("--full-size", action="store_true", help="the generator's full phantoms (default: small)")
    args = parser.parse_args(argv)
    return range(args.first_seed, args.first_seed + args.count), not args.full_size
