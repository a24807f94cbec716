"""What a phantom is: tissue HU values, and the records of a phantom, its nodules and a written series.

A `Phantom` holds the HU volume (int16, (z, y, x), axes along LPS +x, +y, +z) with its geometry and
its `PhantomNodule`s (the truth); `PhantomCase` is a phantom written as DICOM files plus truth.json.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

NoduleKind = Literal["solid", "part-solid", "ground-glass"]
Attachment = Literal["pleura", "vessel"] | None
NoduleMargin = Literal["smooth", "lobulated", "spiculated"]

AIR = -1000.0
LUNG = -860.0
FAT = -100.0
SOFT = 40.0
MUSCLE = 50.0
LIVER = 58.0
BLOOD = 40.0
CANCELLOUS = 280.0
CORTICAL = 1050.0


@dataclass(frozen=True)
class PhantomNodule:
    center_mm: tuple[float, float, float]  # x, y, z LPS
    diameter_mm: float  # diameter of the core sphere before lobulation and spicules
    kind: NoduleKind
    attached_to: Attachment
    malignant: bool
    margin: NoduleMargin = "smooth"
    calcified: bool = False
    solid_diameter_mm: float = 0.0  # the solid component: all of a solid nodule, the core of a part-solid one
    shape_seed: int = 0  # fixes lobulation and spicule directions

    def to_json(self) -> dict:
        d = asdict(self)
        d["center_mm"] = [round(c, 3) for c in self.center_mm]
        d["diameter_mm"] = round(self.diameter_mm, 3)
        d["solid_diameter_mm"] = round(self.solid_diameter_mm, 3)
        return d


@dataclass
class Phantom:
    hu: np.ndarray  # int16 (z, y, x); x -> patient left (+x), y -> posterior (+y), z -> head (+z)
    origin: np.ndarray  # LPS mm of voxel [0, 0, 0]
    spacing: np.ndarray  # (z, y, x) mm
    slice_thickness_mm: float
    patient_position: Literal["HFS", "FFS"]
    nodules: list[PhantomNodule]
    seed: int
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def voxel_to_world(self, zyx: np.ndarray) -> np.ndarray:
        zyx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))
        return self.origin + zyx[:, ::-1] * self.spacing[::-1]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        return ((xyz - self.origin) / self.spacing[::-1])[:, ::-1]


@dataclass
class PhantomCase:
    directory: Path
    files: list[Path]
    truth_path: Path
    phantom: Phantom
    study_instance_uid: str
    series_instance_uid: str
