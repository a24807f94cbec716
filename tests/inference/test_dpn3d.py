"""DPN26 detector: size, shapes, state-dict layout of the original, and the dual-path arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.nets.dpn3d import ANCHORS_MM, DPN26Detector, count_parameters, make_coord
from inference.nets.layers import DualPathBlock, make_stage

torch.set_num_threads(2)


def test_parameter_count_is_dpn26() -> None:
    n = count_parameters(DPN26Detector())
    assert round(n / 1e6, 2) == 1.36
    assert n == 1_360_673


def test_output_is_stride_4_with_three_anchors() -> None:
    torch.manual_seed(0)
    model = DPN26Detector().eval()
    x = torch.randn(2, 1, 64, 48, 32)
    coord = torch.from_numpy(make_coord((64, 48, 32)))[None].repeat(2, 1, 1, 1, 1)
    with torch.no_grad():
        out = model(x, coord)
    assert out.shape == (2, 16, 12, 8, 3, 5)
    assert ANCHORS_MM == (5.0, 10.0, 20.0)
    # batch items are independent in eval mode
    with torch.no_grad():
        single = model(x[1:], coord[1:])
    torch.testing.assert_close(out[1:], single, rtol=1e-4, atol=1e-5)


def test_state_dict_keys_match_original_layout() -> None:
    keys = set(DPN26Detector().state_dict())
    modules = {k.rsplit(".", 1)[0] for k in keys}
    expected = {"conv1", "bn1", "path1.0", "path1.1", "path2.0", "path2.1", "output.0", "output.2", "linear"}
    for layer in range(1, 7):
        for block in (0, 1):
            expected |= {f"layer{layer}.{block}.{n}" for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")}
        expected |= {f"layer{layer}.0.shortcut.0", f"layer{layer}.0.shortcut.1"}
    assert modules == expected
    sd = DPN26Detector().state_dict()
    assert sd["linear.weight"].shape == (2, 120)
    assert sd["output.0.weight"].shape == (64, 248, 1, 1, 1)
    assert sd["output.2.weight"].shape == (15, 64, 1, 1, 1)
    assert sd["layer6.0.conv1.weight"].shape == (224, 227, 1, 1, 1)  # 72 + 152 + 3 coordinate channels
    assert sd["layer5.0.conv1.weight"].shape == (128, 216, 1, 1, 1)
    assert "conv1.bias" not in sd and "layer1.0.conv2.bias" not in sd  # bias-free convs


def test_dual_path_block_concatenates_residual_and_dense_paths() -> None:
    torch.manual_seed(1)
    block = DualPathBlock(40, 24, 32, 8, stride=1, first=False).eval()
    # Zero the last BN: F == 0, so output = relu(cat[x[:, :32], x[:, 32:], zeros(8)])
    torch.nn.init.zeros_(block.bn3.weight)
    torch.nn.init.zeros_(block.bn3.bias)
    x = torch.randn(1, 40, 6, 6, 6)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (1, 48, 6, 6, 6)
    torch.testing.assert_close(y[:, :40], torch.relu(x))
    assert torch.all(y[:, 40:] == 0)
    # with a non-zero F the residual part adds and the dense part appends
    torch.nn.init.ones_(block.bn3.weight)
    torch.nn.init.constant_(block.bn3.bias, 0.25)
    with torch.no_grad():
        f = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))))
        y = block(x)
    torch.testing.assert_close(y[:, :32], torch.relu(x[:, :32] + f[:, :32]))
    torch.testing.assert_close(y[:, 40:], torch.relu(f[:, 32:]))


def test_first_block_projects_and_strides() -> None:
    stage, channels = make_stage(24, 24, 24, 2, 8, stride=2)
    assert channels == 48
    assert isinstance(stage[0].shortcut[0], torch.nn.Conv3d) and stage[0].shortcut[0].stride == (2, 2, 2)
    assert len(stage[1].shortcut) == 0
    assert stage[0].conv2.groups == 8
    with pytest.raises(ValueError):
        DualPathBlock(24, 24, 24, 8, stride=2, first=False)


def test_make_coord_spans_padded_volume() -> None:
    c = make_coord((32, 16, 8))
    assert c.shape == (3, 8, 4, 2) and c.dtype == np.float32
    np.testing.assert_allclose(c[0, :, 0, 0], np.linspace(-0.5, 0.5, 8), atol=1e-7)
    np.testing.assert_allclose(c[1, 0, :, 0], np.linspace(-0.5, 0.5, 4), atol=1e-7)
    np.testing.assert_allclose(c[2, 0, 0, :], [-0.5, 0.5])
    assert np.all(c[0, 3] == c[0, 3, 0, 0])  # constant across the other axes
    with pytest.raises(ValueError):
        make_coord((30, 16, 8))
