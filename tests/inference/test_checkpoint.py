"""Loading original DeepLung checkpoints (PyTorch 0.1 layout), the project format and bare state dicts."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest
import torch

from inference.nets.checkpoint import (
    CheckpointError,
    load_into,
    read_checkpoint,
    save_project_checkpoint,
    state_dict_sha256,
)
from inference.nets.dpn3d import DPN26Detector, make_coord

torch.set_num_threads(2)


class NotAllowed:  # a class that weights_only loading must refuse
    def __init__(self) -> None:
        self.x = 1


@pytest.fixture(scope="module")
def trained() -> DPN26Detector:
    torch.manual_seed(3)
    model = DPN26Detector()
    # non-trivial BN statistics so a wrong mapping would show in the outputs
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def _forward(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        return model.eval()(x, torch.from_numpy(make_coord((32, 32, 32)))[None])


def _write_original(model: torch.nn.Module, path: Path) -> None:
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    args = argparse.Namespace(model="res18", epochs=100, lr=0.01, save_dir="results/dpn3d26")
    torch.save(
        {"epoch": 150, "save_dir": "results/dpn3d26/", "state_dict": state, "args": args},
        path,
        _use_new_zipfile_serialization=False,
    )


def test_original_deeplung_layout_loads_with_identical_outputs(trained: DPN26Detector, tmp_path: Path) -> None:
    path = tmp_path / "detector.ckpt"
    _write_original(trained, path)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # legacy (non-zip) serialization, as old PyTorch wrote
    fresh = DPN26Detector()
    ckpt = load_into(fresh, path)
    assert ckpt.layout == "deeplung" and ckpt.epoch == 150
    assert ckpt.args["lr"] == 0.01
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(_forward(fresh), _forward(trained))
    assert int(fresh.bn1.num_batches_tracked) == 0


def test_project_format_and_bare_state_dict(trained: DPN26Detector, tmp_path: Path) -> None:
    card = {"name": "dpn26-demo", "version": "0.1"}
    sha = save_project_checkpoint(trained, tmp_path / "p.pt", card, epoch=7)
    fresh = DPN26Detector()
    ckpt = load_into(fresh, tmp_path / "p.pt")
    assert (ckpt.layout, ckpt.model_card, ckpt.sha256) == ("project", card, sha)
    assert torch.equal(_forward(fresh), _forward(trained))

    torch.save(trained.state_dict(), tmp_path / "bare.pt")
    fresh2 = DPN26Detector()
    assert load_into(fresh2, tmp_path / "bare.pt").layout == "state_dict"
    assert state_dict_sha256(fresh2) == state_dict_sha256(trained)
    assert state_dict_sha256(DPN26Detector()) != state_dict_sha256(trained)


def test_mismatched_weights_are_refused_with_reason(trained: DPN26Detector, tmp_path: Path) -> None:
    state = dict(trained.state_dict())
    del state["output.2.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing 1.*output.2.weight.*unexpected 1"):
        load_into(DPN26Detector(), tmp_path / "bad.pt")


def test_untrusted_objects_and_junk_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "args": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such weights file"):
        read_checkpoint(tmp_path / "absent.pt")
