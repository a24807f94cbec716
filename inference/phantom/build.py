"""The public builders: `make_phantom` (a whole synthetic chest CT) and `insert_nodules` (phantom
nodules painted into a real CT volume).

Speed: the anatomy is drawn on a coarse grid (about 1.5 mm) and upsampled trilinearly; nodules are
drawn at full resolution; noise comes from a small pool of noise planes shifted per slice. A
512x512x240 phantom builds in a few seconds on 2 cores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence, TypedDict

import numpy as np
from scipy import ndimage

from inference.phantom.anatomy import _render_anatomy
from inference.phantom.drawing import _Grid, _upsample
from inference.phantom.model import Phantom, PhantomNodule
from inference.phantom.nodules import _place_nodules, _sample_nodule_spec, paint_nodule
from inference.volume import Volume

_COARSE_MM = 1.5
NOISE_SD_HU = 20.0  # the phantoms' image noise per voxel


class PhantomOptions(TypedDict, total=False):
    """`make_phantom`'s keyword options, for callers that pass them on (`write_phantom_series`)."""

    small: bool
    matrix: int | None
    n_slices: int | None
    pixel_spacing_mm: float | None
    slice_spacing_mm: float | None
    slice_thickness_mm: float | None
    patient_position: Literal["HFS", "FFS"] | None
    origin_offset_mm: Sequence[float] | None
    n_nodules: int | None


def make_phantom(
    seed: int,
    *,
    small: bool = False,
    matrix: int | None = None,
    n_slices: int | None = None,
    pixel_spacing_mm: float | None = None,
    slice_spacing_mm: float | None = None,
    slice_thickness_mm: float | None = None,
    patient_position: Literal["HFS", "FFS"] | None = None,
    origin_offset_mm: Sequence[float] | None = None,
    n_nodules: int | None = None,
) -> Phantom:
    """A synthetic chest CT. Unset options are drawn from the seed; `small` gives 256x256x~100 at coarse spacing."""
    scene = _scene(seed, small=small, matrix=matrix, n_slices=n_slices, pixel_spacing_mm=pixel_spacing_mm,
                   slice_spacing_mm=slice_spacing_mm, slice_thickness_mm=slice_thickness_mm,
                   patient_position=patient_position, origin_offset_mm=origin_offset_mm, n_nodules=n_nodules)
    return _render(scene, seed)


def _render(scene: "_Scene", seed: int) -> Phantom:
    """The fine volume of a scene: its anatomy upsampled, its nodules painted, noise (the scene's generator)."""
    hu = _upsample(scene.coarse_hu, scene.fine.shape)
    for nodule in scene.nodules:
        paint_nodule(hu, scene.fine.origin, scene.fine.spacing, np.eye(3), nodule)
    _add_noise(hu, scene.rng)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    return Phantom(
        hu=hu.astype(np.int16), origin=scene.fine.origin, spacing=scene.fine.spacing,
        slice_thickness_mm=scene.thickness, patient_position=scene.position, nodules=scene.nodules, seed=seed,
    )


def phantom_and_anatomy(seed: int, *, small: bool = False, margin_mm: float = 0.0) -> tuple[Phantom, Phantom, np.ndarray]:
    """`make_phantom(seed, small=small)` and `anatomy_and_lungs(seed, small=small, margin_mm=margin_mm)`,
    identical to calling both, from one drawing of the anatomy (the slow part): the nodule-free phantom's
    noise continues the seed's generator from where the anatomy left it, as its own scene would."""
    scene = _scene(seed, small=small, matrix=None, n_slices=None, pixel_spacing_mm=None, slice_spacing_mm=None,
                   slice_thickness_mm=None, patient_position=None, origin_offset_mm=None, n_nodules=None)
    anatomy = replace(scene, nodules=[], rng=np.random.default_rng())
    anatomy.rng.bit_generator.state = scene.anatomy_rng_state
    return _render(scene, seed), _render(anatomy, seed), _drawn_lungs(scene, margin_mm)


def anatomy_and_lungs(seed: int, *, small: bool = False, margin_mm: float = 0.0) -> tuple[Phantom, np.ndarray]:
    """The nodule-free phantom of `seed` (`make_phantom(seed, small=small, n_nodules=0)`: the anatomy is
    drawn before the nodules, so it is the same as with them) and its lungs as the generator drew them, on
    its grid (bool, (z, y, x)): the lung label (parenchyma with the vessels and airways inside it; not the
    chest wall, mediastinum or the hilar structures outside the lungs), upsampled as the anatomy's HU are;
    `margin_mm`: only what lies deeper than that inside them (measured on the anatomy's coarse grid).
    Both from one scene: drawing the anatomy is the slow part."""
    scene = _scene(seed, small=small, matrix=None, n_slices=None, pixel_spacing_mm=None, slice_spacing_mm=None,
                   slice_thickness_mm=None, patient_position=None, origin_offset_mm=None, n_nodules=0)
    return _render(scene, seed), _drawn_lungs(scene, margin_mm)


def _drawn_lungs(scene: "_Scene", margin_mm: float) -> np.ndarray:
    """The scene's lung label on its fine grid; with `margin_mm`, only what lies deeper than that."""
    lungs = scene.label > 0
    if margin_mm > 0:
        lungs = _deeper_than(lungs, scene.coarse.spacing, margin_mm)
    return _upsample(lungs.astype(np.float32), scene.fine.shape) >= 0.5


def _deeper_than(mask: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """The voxels of `mask` farther than `margin_mm` from every voxel outside it: what
    `distance_transform_edt(mask, sampling=spacing) > margin_mm` gives (the array's edge is no outside), as an
    erosion by the ball of that radius (the distance transform of the whole volume took seconds)."""
    reach = np.floor(margin_mm / np.asarray(spacing, float)).astype(int)
    size = tuple(int(n) for n in 2 * reach + 1)
    offsets = np.indices(size).reshape(3, -1).T - reach
    ball = np.sqrt(((offsets * spacing) ** 2).sum(axis=1)) <= margin_mm
    structure = np.zeros(size, bool)
    structure[tuple((offsets[ball] + reach).T)] = True
    return ndimage.binary_erosion(mask, structure=structure, border_value=1)


@dataclass
class _Scene:
    """A phantom before its fine volume is drawn: the anatomy on the coarse grid, the nodules placed,
    the fine grid, and the seed's generator where make_phantom continues (noise). Follow-up phantoms
    (inference.phantom.follow_up) resample this anatomy into another scanner frame."""

    rng: np.random.Generator
    fine: _Grid
    coarse: _Grid
    coarse_hu: np.ndarray  # float32, anatomy without nodules
    label: np.ndarray  # 0 none, 1 right lung, 2 left lung
    vessels: list[tuple[np.ndarray, float]]
    nodules: list[PhantomNodule]
    thickness: float
    position: Literal["HFS", "FFS"]
    # the generator's state once the anatomy is drawn, before any nodule: where a nodule-free scene's noise begins
    anatomy_rng_state: Mapping[str, Any] = field(default_factory=dict)


def _scene(
    seed: int, *, small: bool, matrix: int | None, n_slices: int | None, pixel_spacing_mm: float | None,
    slice_spacing_mm: float | None, slice_thickness_mm: float | None,
    patient_position: Literal["HFS", "FFS"] | None, origin_offset_mm: Sequence[float] | None,
    n_nodules: int | None,
) -> _Scene:
    # the draw order of `rng` is what makes a seed's phantom: keep it when changing anything here
    rng = np.random.default_rng(seed)
    matrix = matrix or (256 if small else 512)
    if matrix < 64:
        raise ValueError(f"matrix {matrix} is too small for a chest phantom (64 or more)")
    if pixel_spacing_mm is None:
        fov = rng.uniform(330, 400)
        pixel_spacing_mm = fov / matrix
    if slice_spacing_mm is None:
        slice_spacing_mm = float(rng.choice([2.5, 3.0]) if small else rng.choice([0.625, 1.0, 1.25, 1.25, 1.5, 2.0, 2.5]))
    if n_slices is None:
        coverage = rng.uniform(280, 320)
        n_slices = int(round(coverage / slice_spacing_mm))
    if n_slices < 8:
        raise ValueError(f"n_slices {n_slices} is too few for a chest phantom (8 or more)")
    thickness = float(slice_thickness_mm or slice_spacing_mm)
    position = _patient_position(patient_position or str(rng.choice(["HFS", "FFS"], p=[0.8, 0.2])))
    offset = np.asarray(origin_offset_mm, float) if origin_offset_mm is not None else np.array(
        [rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-400, -100)]
    )
    fov = matrix * pixel_spacing_mm
    origin = np.array([-fov / 2 + pixel_spacing_mm / 2 + offset[0], -fov / 2 + pixel_spacing_mm / 2 + offset[1], offset[2]])
    spacing = np.array([slice_spacing_mm, pixel_spacing_mm, pixel_spacing_mm], float)
    shape = (n_slices, matrix, matrix)
    fine = _Grid(origin=origin, spacing=spacing, shape=shape)

    # coarse grid with the same corners, so align_corners trilinear upsampling maps exactly
    coarse_shape = (_coarse_size(shape[0], spacing[0]), _coarse_size(shape[1], spacing[1]), _coarse_size(shape[2], spacing[2]))
    coarse_spacing = np.array([(n - 1) * s / (c - 1) for n, s, c in zip(shape, spacing, coarse_shape)])
    coarse = _Grid(origin=origin, spacing=coarse_spacing, shape=coarse_shape)
    vol, label, vessels, anatomy = _render_anatomy(coarse, rng)
    anatomy_rng_state = rng.bit_generator.state

    # nodules stay whole inside the scanned range and inside the lung (not in a big vessel or airway)
    inside = (label > 0) & (vol < -600)
    specs = [_sample_nodule_spec(rng) for _ in range(int(rng.integers(1, 7)) if n_nodules is None else n_nodules)]
    nodules = _place_nodules(specs, inside, coarse, vessels, rng, lung=label > 0)

    return _Scene(rng=rng, fine=fine, coarse=coarse, coarse_hu=vol, label=label, vessels=vessels, nodules=nodules,
                  thickness=thickness, position=position, anatomy_rng_state=anatomy_rng_state)


def _patient_position(value: str) -> Literal["HFS", "FFS"]:
    if value == "HFS":
        return "HFS"
    if value == "FFS":
        return "FFS"
    raise ValueError(f"patient_position must be HFS or FFS, not {value!r}")


def _coarse_size(n: int, spacing_mm: float) -> int:
    """Points on a coarse axis with the same end points as `n` fine points `spacing_mm` apart."""
    return max(2, min(n, int(math.ceil((n - 1) * spacing_mm / _COARSE_MM)) + 1))


def _add_noise(hu: np.ndarray, rng: np.random.Generator) -> None:
    """Correlated Gaussian noise (~20 HU sd) from a pool of planes, rolled differently per slice."""
    n, rows, cols = hu.shape
    pool = rng.standard_normal((min(8, n), rows, cols), dtype=np.float32)
    pool = ndimage.gaussian_filter(pool, (0, 0.6, 0.6))
    pool *= NOISE_SD_HU / float(pool.std())
    shifts = rng.integers(0, max(rows, cols), size=(n, 2))
    for k in range(n):
        hu[k] += np.roll(pool[k % len(pool)], tuple(shifts[k]), axis=(0, 1))


def insert_nodules(
    volume: Volume, lung_mask: np.ndarray, nodules: int | Sequence[PhantomNodule], rng: np.random.Generator
) -> list[PhantomNodule]:
    """Paint phantom nodules into a real CT (volume.hu, in place) inside `lung_mask` ((z, y, x) like volume.hu).

    `nodules` is either a count (random nodules at random lung positions) or explicit nodules whose
    centres must lie inside the mask. Returns the nodules painted, with world centres.
    """
    if lung_mask.shape != volume.hu.shape:
        raise ValueError(f"lung mask shape {lung_mask.shape} differs from the volume {volume.hu.shape}")
    if isinstance(nodules, int):
        if not np.array_equal(np.abs(volume.direction), np.eye(3)):
            raise ValueError("random placement needs an axis-aligned volume; pass explicit nodules instead")
        # place on an axis-aligned grid view of the volume (flip axes whose direction is negative)
        flips = np.diag(volume.direction) < 0
        view = lung_mask[tuple(slice(None, None, -1) if f else slice(None) for f in flips[::-1])]
        corner = volume.voxel_to_world(np.array([[0 if not flips[2] else volume.shape[0] - 1,
                                                   0 if not flips[1] else volume.shape[1] - 1,
                                                   0 if not flips[0] else volume.shape[2] - 1]]))[0]
        grid = _Grid(origin=corner, spacing=volume.spacing, shape=lung_mask.shape)
        inside = view & (_as_view(volume.hu, flips) < -600)
        specs = [_sample_nodule_spec(rng) for _ in range(nodules)]
        for s in specs:
            if s["attached_to"] == "vessel":  # no vessel tree is known in a real scan
                s["attached_to"] = None
        placed = _place_nodules(specs, inside, grid, [], rng)
    else:
        placed = list(nodules)
        for nodule in placed:
            idx = np.rint(volume.world_to_voxel(np.asarray(nodule.center_mm))).astype(int)
            if np.any(idx < 0) or np.any(idx >= np.array(volume.shape)) or not lung_mask[tuple(idx)]:
                raise ValueError(f"nodule centre {nodule.center_mm} is not inside the lung mask")
    for nodule in placed:
        paint_nodule(volume.hu, volume.origin, volume.spacing, volume.direction, nodule)
    return placed


def _as_view(array: np.ndarray, flips: np.ndarray) -> np.ndarray:
    return array[tuple(slice(None, None, -1) if f else slice(None) for f in flips[::-1])]
