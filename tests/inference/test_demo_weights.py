"""The packaged demo weights: present, small, matching their manifest, loadable, and able to find nodules."""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference.classify import MalignancyClassifier
from inference.hashing import file_sha256
from inference.nets.checkpoint import load_into
from inference.nets.classifier import DPNClassifierNet
from inference.nets.dpn3d import DPN26Detector
from inference.weights_bundle import PACKAGED_WEIGHTS, load_weights_bundle

# a held-out phantom (training used seeds 1000..1027) with nodules of 10 mm and more
HELD_OUT_SEED = 9001


def test_manifest_hashes_match_the_files():
    manifest = json.loads((PACKAGED_WEIGHTS / "manifest.json").read_text())
    assert manifest["name"] == "dicomnode-dpn26" and manifest["version"]
    assert {"detector", "malignancy_gbm"} <= set(manifest["files"])
    total = 0
    for entry in manifest["files"].values():
        path = PACKAGED_WEIGHTS / entry["path"]
        assert file_sha256(path) == entry["sha256"], path
        total += path.stat().st_size
    assert total < 8 * 1024 * 1024  # "a few MB"
    assert (PACKAGED_WEIGHTS / "MODEL_CARD.md").read_text().count("NOT FOR CLINICAL USE") >= 1


def test_packaged_networks_load():
    bundle = load_weights_bundle()
    ck = load_into(DPN26Detector(), bundle.detector)
    assert ck.layout == "project" and "NOT FOR CLINICAL USE" in ck.model_card["warning"]
    features_fn = None
    if bundle.classifier_net is not None:
        from inference.classify import torch_features_fn

        net = DPNClassifierNet()
        load_into(net, bundle.classifier_net)
        features_fn = torch_features_fn(net.eval())
    gbm = MalignancyClassifier.load(bundle.malignancy_gbm, features_fn=features_fn,
                                    expected_sha256=bundle.sha256("malignancy_gbm"))
    crops = np.full((2, 32, 32, 32), 30, np.uint8)
    crops[:, 10:22, 10:22, 10:22] = 140
    p = gbm.predict_proba(crops, [12.0, 12.0])
    assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))


@pytest.mark.slow
def test_held_out_phantom_big_nodules_are_found():
    from inference.detect import detect
    from inference.engines import make_engine
    from inference.training.cases import phantom_case

    bundle = load_weights_bundle()
    det = DPN26Detector()
    load_into(det, bundle.detector)
    engine = make_engine("onnxruntime", network="detector", model=det.eval(), weights_sha256=bundle.sha256("detector"))
    case = phantom_case(HELD_OUT_SEED)
    big = case.nodules[case.nodules[:, 3] >= 10]
    assert len(big), "the chosen phantom should hold a nodule of 10 mm or more"
    threshold = bundle.manifest.get("report_threshold_probability") or 0.12
    found = [c for c in detect(engine, case.image) if c.probability >= threshold]
    centres = np.array([c.zyx for c in found]).reshape(-1, 3)
    for z, y, x, d in big:
        dist = np.linalg.norm(centres - [z, y, x], axis=1)
        assert len(dist) and dist.min() < d / 2, f"nodule of {d:.1f} mm at {(z, y, x)} not found"
