"""DPN26 3D nodule detector (DeepLung; docs/architecture.md, "Flow").

A U-shaped dual-path network: four stride-2 stages down to 1/16, two transposed-conv steps back
up to 1/4, where relative coordinates join the features and a 1x1x1 head predicts, per voxel of
the stride-4 grid and per anchor, (logit, dz, dy, dx, dd).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.nets.layers import make_stage

STRIDE = 4
MAX_STRIDE = 16  # the input side must be a multiple of this (four stride-2 stages)
ANCHORS_MM: tuple[float, float, float] = (5.0, 10.0, 20.0)
FIELDS = 5  # logit, dz, dy, dx, dd


class DPN26Detector(nn.Module):
    """forward(x (N,1,D,H,W), coord (N,3,D/4,H/4,W/4)) -> (N, D/4, H/4, W/4, 3, 5)."""

    def __init__(self, n_anchors: int = len(ANCHORS_MM), dropout: float = 0.5) -> None:
        super().__init__()
        self.n_anchors = n_anchors
        self.conv1 = nn.Conv3d(1, 24, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(24)
        self.layer1, c1 = make_stage(24, 24, 24, 2, 8, stride=2)  # 48 ch, 1/2
        self.layer2, c2 = make_stage(c1, 48, 48, 2, 8, stride=2)  # 72 ch, 1/4
        self.layer3, c3 = make_stage(c2, 72, 72, 2, 8, stride=2)  # 96 ch, 1/8
        self.layer4, c4 = make_stage(c3, 96, 96, 2, 8, stride=2)  # 120 ch, 1/16
        self.path1 = nn.Sequential(
            nn.ConvTranspose3d(c4, c4, kernel_size=2, stride=2), nn.BatchNorm3d(c4), nn.ReLU(inplace=True)
        )
        self.layer5, c5 = make_stage(c3 + c4, 128, 128, 2, 8, stride=1)  # 152 ch, 1/8
        self.path2 = nn.Sequential(
            nn.ConvTranspose3d(c5, c5, kernel_size=2, stride=2), nn.BatchNorm3d(c5), nn.ReLU(inplace=True)
        )
        self.layer6, c6 = make_stage(c2 + c5 + 3, 224, 224, 2, 8, stride=1)  # 248 ch, 1/4
        # Dropout sits outside `output` so the head's keys stay output.0 / output.2 as in the original.
        self.drop = nn.Dropout3d(p=dropout)
        self.output = nn.Sequential(
            nn.Conv3d(c6, 64, kernel_size=1), nn.ReLU(), nn.Conv3d(64, FIELDS * n_anchors, kernel_size=1)
        )
        # Unused by forward; kept because original checkpoints carry linear.weight/bias.
        self.linear = nn.Linear(c4, 2)

    def forward(self, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        out0 = F.relu(self.bn1(self.conv1(x)))
        out1 = self.layer1(out0)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        up1 = self.path1(out4)
        out5 = self.layer5(torch.cat([out3, up1], dim=1))
        up2 = self.path2(out5)
        out6 = self.layer6(torch.cat([out2, up2, coord], dim=1))
        out = self.output(self.drop(out6))
        # (N, A*5, d, h, w) -> (N, d, h, w, A, 5); channel index = anchor * 5 + field.
        n, _, d, h, w = out.shape
        return out.permute(0, 2, 3, 4, 1).reshape(n, d, h, w, self.n_anchors, FIELDS)


def make_coord(shape_padded: tuple[int, int, int], stride: int = STRIDE) -> np.ndarray:
    """Relative coordinates (3, D/s, H/s, W/s) float32, each axis linspace(-0.5, 0.5).

    Spans the whole padded volume (not a crop), as DeepLung does: crops then take their slice of it,
    so the network sees where in the scan a crop lies.
    """
    sizes = []
    for n in shape_padded:
        if n % stride:
            raise ValueError(f"padded shape {tuple(shape_padded)} is not a multiple of stride {stride}")
        sizes.append(n // stride)
    axes = [np.linspace(-0.5, 0.5, s, dtype=np.float64) for s in sizes]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack(grids, axis=0).astype(np.float32)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
