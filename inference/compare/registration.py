"""Prior -> current registration: a rigid transform of patient coordinates (LPS mm), with SimpleITK.

The choice, and why:
- Rigid (3 rotations, 3 translations), not affine or deformable: between two screening CTs of the same
  patient the differences that break matching are the table position, the field of view and how the
  patient lies; an affine's scaling would partly absorb what we want to measure (growth is measured on
  the nodules, but a scaled frame shifts distant nodules), and breathing differences are left to the
  matching's distance gate (see matching.py), which is sized for them.
- Metric: Mattes mutual information on the CT clipped to [-1000, 200] HU, so bone, soft tissue and air
  boundaries all drive it, and kernels or scanners that shift HU a little do not.
- Initialisation: the lung-mask centroids aligned (lung masks of both exams, when given; else the
  images' geometric centres). Table shifts of tens of centimetres then start within reach.
- Multi-resolution: both CTs are first resampled to a 3 mm isotropic grid (the registration does not
  need more, and it keeps the step to seconds on 2 cores), then a three-level pyramid (shrink 4, 2, 1;
  smoothing 2, 1, 0 voxels) with regular-step gradient descent refines the rigid transform from coarse
  to fine, so the optimiser does not stop in a local optimum of the fine grid.
The unit tests recover known translations of tens of mm and rotations of a few degrees within 2 mm at
nodule positions (tests/inference/test_compare_registration.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

WORK_SPACING_MM = 3.0
HU_CLIP = (-1000.0, 200.0)


class ImageLike(Protocol):
    """What registration needs of a CT: `inference.volume.Volume` and `inference.phantom.Phantom` are."""

    hu: np.ndarray  # (z, y, x)
    origin: np.ndarray  # LPS mm of voxel [0, 0, 0]
    spacing: np.ndarray  # (z, y, x) mm
    direction: np.ndarray  # 3x3, columns: the x (column), y (row), z (slice) axes in LPS


@dataclass(frozen=True)
class RigidTransform:
    """current = rotation @ prior + translation (LPS mm)."""

    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) prior patient coordinates -> current ones."""
        pts = np.asarray(xyz, dtype=np.float64)
        return pts @ self.rotation.T + self.translation

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip((np.trace(self.rotation) - 1) / 2, -1.0, 1.0))))

    @classmethod
    def identity(cls) -> RigidTransform:
        return cls(np.eye(3), np.zeros(3))

    def to_json(self) -> dict[str, object]:
        return {"rotation": np.round(self.rotation, 6).tolist(), "translation_mm": np.round(self.translation, 2).tolist(),
                "rotation_deg": round(self.rotation_deg, 2)}


@dataclass(frozen=True)
class Registration:
    transform: RigidTransform
    metric: float  # final Mattes MI (more negative is better)
    initial_shift_mm: tuple[float, float, float]  # the centroid alignment it started from
    method: str = "rigid Mattes-MI, 3 mm, pyramid 4/2/1, lung-centroid initialisation"

    def to_json(self) -> dict[str, object]:
        return {"method": self.method, "metric": round(self.metric, 4), **self.transform.to_json()}


def _sitk_image(image: ImageLike):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    hu = np.clip(np.asarray(image.hu, dtype=np.float32), *HU_CLIP)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([float(s) for s in np.asarray(image.spacing, float)[::-1]])
    img.SetOrigin([float(v) for v in image.origin])
    img.SetDirection([float(v) for v in np.asarray(image.direction, float).ravel()])
    return img


def _resample_isotropic(img, spacing_mm: float):  # type: ignore[no-untyped-def]
    """`img` on a grid of `spacing_mm`, same origin and direction, smoothed first to avoid aliasing."""
    import SimpleITK as sitk

    old_spacing = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    new_size = [max(4, int(round(n * s / spacing_mm))) for n, s in zip(size, old_spacing)]
    # recursive Gaussian (fast); at least half a voxel per axis, which it needs to be stable
    sigma = [max((spacing_mm - s) / 2.0, 0.5 * s) for s in old_spacing]
    smoothed = sitk.SmoothingRecursiveGaussian(img, sigma)
    return sitk.Resample(smoothed, new_size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                         [spacing_mm] * 3, img.GetDirection(), HU_CLIP[0], sitk.sitkFloat32)


def _centroid_world(image: ImageLike, mask: np.ndarray | None) -> np.ndarray:
    """World centroid of the mask, or of the volume's box when there is no usable mask."""
    shape = np.array(image.hu.shape, float)
    if mask is not None and mask.any():
        zyx = np.argwhere(mask).mean(axis=0)
    else:
        zyx = (shape - 1) / 2
    ijk_mm = zyx[::-1] * np.asarray(image.spacing, float)[::-1]
    return np.asarray(image.origin, float) + ijk_mm @ np.asarray(image.direction, float).T


def register(prior: ImageLike, current: ImageLike, *, prior_lungs: np.ndarray | None = None,
             current_lungs: np.ndarray | None = None, work_spacing_mm: float = WORK_SPACING_MM) -> Registration:
    """The rigid transform mapping prior patient coordinates onto the current exam's (see the module doc)."""
    import SimpleITK as sitk

    fixed = _resample_isotropic(_sitk_image(current), work_spacing_mm)
    moving = _resample_isotropic(_sitk_image(prior), work_spacing_mm)
    c_cur = _centroid_world(current, current_lungs)
    c_pri = _centroid_world(prior, prior_lungs)
    # SimpleITK transforms map fixed (current) points to moving (prior) points
    initial = sitk.Euler3DTransform()
    initial.SetCenter([float(v) for v in c_cur])
    initial.SetTranslation([float(v) for v in c_pri - c_cur])

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.25, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=4.0, minStep=0.01, numberOfIterations=200,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=True)
    reg.Execute(fixed, moving)

    # current -> prior: p = A q + b; invert for prior -> current
    a = np.array(initial.GetMatrix(), float).reshape(3, 3)
    b = np.array(initial.TransformPoint((0.0, 0.0, 0.0)), float)
    rotation = a.T
    translation = -a.T @ b
    shift = c_cur - c_pri
    return Registration(RigidTransform(rotation, translation), float(reg.GetMetricValue()),
                        (float(shift[0]), float(shift[1]), float(shift[2])))
