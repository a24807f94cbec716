"""A weights folder: `manifest.json` (file names, SHA-256s, version, report threshold) and its files.

The packaged demo weights live in `inference/weights/`. `load_weights_bundle` checks every file's
SHA-256 against the manifest before anything loads it; `write_manifest` is the one writer of a
manifest (training's packaging and `dicomnode model calibrate` both go through it).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.hashing import file_sha256
from inference.tempfiles import temporary_beside

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"


class WeightsError(Exception):
    """The weights folder is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class WeightsBundle:
    directory: Path
    manifest: dict[str, Any]
    detector: Path
    classifier_net: Path | None
    malignancy_gbm: Path | None

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    def sha256(self, role: str) -> str:
        return str(self.manifest["files"][role]["sha256"])

    def combined_sha256(self) -> str:
        """One digest over every weights file of the bundle (role and SHA-256, in role order): it
        changes when any of them changes - the detector, the classifier network or the GBM."""
        files = self.manifest["files"]
        lines = "".join(f"{role}:{str(files[role]['sha256']).lower()}\n" for role in sorted(files))
        return hashlib.sha256(lines.encode("ascii")).hexdigest()


def load_weights_bundle(directory: str | Path | None = None, verify: bool = True) -> WeightsBundle:
    """Read `manifest.json` of a weights folder (the packaged one by default) and check the files."""
    root = Path(directory) if directory is not None else PACKAGED_WEIGHTS
    path = root / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{root}: no {MANIFEST}; train weights with `dicomnode model train` or pass --weights")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path}: not a weights manifest ({exc})") from None
    if "detector" not in files:
        raise WeightsError(f"{path}: names no detector file")
    resolved: dict[str, Path | None] = {}
    for role in ("detector", "classifier_net", "malignancy_gbm"):
        entry = files.get(role)
        if entry is None:
            resolved[role] = None
            continue
        f = root / entry["path"]
        if not f.is_file():
            raise WeightsError(f"{f}: missing (listed in {path})")
        if verify and file_sha256(f) != entry["sha256"]:
            raise WeightsError(f"{f}: SHA-256 differs from {path}; the file was changed or damaged")
        resolved[role] = f
    detector = resolved["detector"]
    if detector is None:  # listed as null: as unusable as not listed
        raise WeightsError(f"{path}: names no detector file")
    return WeightsBundle(root, manifest, detector, resolved["classifier_net"], resolved["malignancy_gbm"])


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Write a weights folder's `manifest.json` whole or not at all (a node may be reading it)."""
    path = Path(directory) / MANIFEST
    tmp = temporary_beside(path)
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path
