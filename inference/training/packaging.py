"""Packaging: a trained detector (and malignancy stage) as a weights folder with its manifest."""
from __future__ import annotations

from pathlib import Path

import torch


def package_weights(
    out_dir: str | Path, detector: str | Path, *, classifier_net: str | Path | None = None,
    malignancy_gbm: str | Path | None = None, version: str, report_threshold_probability: float | None = None,
    extra: dict | None = None, half: bool = True,
) -> Path:
    """Write a weights folder the pipeline reads: the files plus manifest.json with their SHA-256s.

    `half` stores the detector's floating tensors as float16 (half the size; they load back into
    the float32 model with a rounding error far below the network's own noise).
    """
    import shutil

    from inference.classify import MalignancyClassifier  # noqa: F401  (the GBM file format lives there)
    from inference.hashing import file_sha256
    from inference.nets.checkpoint import read_checkpoint
    from inference.weights_bundle import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck = read_checkpoint(detector)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ck.state_dict.items()}
    det_path = out / "detector.pt"
    torch.save({"state_dict": state, "model_card": ck.model_card, "epoch": ck.epoch}, det_path)
    files = {"detector": {"path": det_path.name, "sha256": file_sha256(det_path)}}
    if classifier_net is not None:
        dst = out / "classifier.pt"
        if Path(classifier_net).resolve() != dst.resolve():
            shutil.copyfile(classifier_net, dst)
        files["classifier_net"] = {"path": dst.name, "sha256": file_sha256(dst)}
    if malignancy_gbm is not None:
        dst = out / "malignancy-gbm.joblib"
        if Path(malignancy_gbm).resolve() != dst.resolve():
            shutil.copyfile(malignancy_gbm, dst)
        files["malignancy_gbm"] = {"path": dst.name, "sha256": file_sha256(dst)}
    manifest = {
        "name": "dicomnode-dpn26",
        "version": version,
        "files": files,
        "report_threshold_probability": report_threshold_probability,
        "warning": "NOT FOR CLINICAL USE",
        **(extra or {}),
    }
    return write_manifest(out, manifest)
