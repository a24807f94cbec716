"""Compact 3D DPN feature extractor for 32^3 nodule crops (DeepLung's classification stage).

The original used DPN92-3D (37 M parameters, 2560-d features); the packaged model needs to be
small and trainable on CPU, so this keeps the same building block (``DualPathBlock``) in four
stride-2 stages: 32^3 -> 16 -> 8 -> 4 -> 2, then a global average pool to ``FEATURES`` values.
About 256 k parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inference.nets.layers import make_stage

CROP_SIZE = 32
# (mid_planes, out_planes, dense_depth) per stage; each stage has two blocks and stride 2
STAGES: tuple[tuple[int, int, int], ...] = ((32, 32, 8), (48, 64, 8), (64, 96, 16), (96, 128, 16))
STEM_PLANES = 24
FEATURES = STAGES[-1][1] + 3 * STAGES[-1][2]  # 176: out planes + dense path after two blocks


class DPNClassifierNet(nn.Module):
    """``forward(x)`` maps (N, 1, 32, 32, 32) normalised crops ((v - 128) / 128) to (N, F).

    ``head`` (Linear(F, 2)) is only for training the features end to end (benign/malignant);
    at inference the features go to the gradient-boosting stage instead.
    """

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, STEM_PLANES, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(STEM_PLANES)
        planes = STEM_PLANES
        stages = []
        for mid, out, dense in STAGES:
            stage, planes = make_stage(planes, mid, out, num_blocks=2, dense_depth=dense, stride=2)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if planes != FEATURES:
            raise AssertionError(f"stage arithmetic: {planes} != {FEATURES}")
        self.num_features = planes
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(planes, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the check is for callers; an ONNX export traces a fixed (N, 1, 32, 32, 32) input
        if not torch.jit.is_tracing() and (x.dim() != 5 or x.shape[1] != 1):
            raise ValueError(f"expected (N, 1, D, H, W) crops, got {tuple(x.shape)}")
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean(dim=(2, 3, 4))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Benign/malignant logits, for end-to-end training of the features."""
        return self.head(self.dropout(self.forward(x)))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
