"""The 3D dual-path block shared by the detector and the classifier (docs/architecture.md, "Flow").

Attribute names (conv1, bn1, conv2, bn2, conv3, bn3, shortcut.0, shortcut.1) are the state-dict
keys of the original DeepLung checkpoints, so those files load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 8  # grouped 3x3x3 conv, as in DPN


class DualPathBlock(nn.Module):
    """Residual path (first ``out_planes`` channels) plus a growing dense path.

    Output channels: ``out_planes + dense_depth + extra`` where ``extra`` is the dense channels
    the input already carried (``in_planes - out_planes`` after the first block of a stage).
    """

    def __init__(
        self,
        in_planes: int,
        mid_planes: int,
        out_planes: int,
        dense_depth: int,
        stride: int = 1,
        first: bool = False,
    ) -> None:
        super().__init__()
        if mid_planes % GROUPS:
            raise ValueError(f"mid_planes={mid_planes} must be divisible by {GROUPS} groups")
        self.out_planes = out_planes
        self.dense_depth = dense_depth
        self.conv1 = nn.Conv3d(in_planes, mid_planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid_planes)
        self.conv2 = nn.Conv3d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=GROUPS, bias=False
        )
        self.bn2 = nn.BatchNorm3d(mid_planes)
        self.conv3 = nn.Conv3d(mid_planes, out_planes + dense_depth, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_planes + dense_depth)
        # Only the first block of a stage changes resolution/width, so only it needs a projection;
        # an empty Sequential keeps the original (key-free) layout for the others.
        self.shortcut = nn.Sequential()
        if first:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_planes, out_planes + dense_depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(out_planes + dense_depth),
            )
        elif stride != 1:
            raise ValueError("a block with stride != 1 must be the first of its stage (needs a shortcut)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        x = self.shortcut(x)
        d = self.out_planes
        return F.relu(torch.cat([x[:, :d] + out[:, :d], x[:, d:], out[:, d:]], dim=1))


def make_stage(
    in_planes: int,
    mid_planes: int,
    out_planes: int,
    num_blocks: int,
    dense_depth: int,
    stride: int,
) -> tuple[nn.Sequential, int]:
    """A stage of dual-path blocks; returns it and its output channel count.

    Each block widens the dense path by ``dense_depth``; the first block's projection shortcut
    already carries one ``dense_depth`` slice, hence ``out + (i + 2) * dense`` after block i.
    """
    blocks = []
    planes = in_planes
    for i in range(num_blocks):
        blocks.append(DualPathBlock(planes, mid_planes, out_planes, dense_depth, stride if i == 0 else 1, i == 0))
        planes = out_planes + (i + 2) * dense_depth
    return nn.Sequential(*blocks), planes
