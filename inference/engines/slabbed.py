"""The DPN26 detector on ONNX Runtime with its full-resolution layers run slab by slab (exact, bounded memory).

Almost all of the detector's memory is in two full-resolution activations: `conv1`'s output and the
first block's 1x1 expansion, 24 channels each (about 1.8 GB apiece for lidc-idri-0002's 320x208x288
lung box). Everything after `layer1` runs at 1/2 resolution or less. So the network is exported as
two graphs: the stem (conv1, bn1, layer1: input -> half-resolution features) and the trunk (the rest).
The stem runs over z-slabs of the input with a halo of `STEM_HALO` slices on each side, enough for its
receptive field, so each slab's central output equals the whole-volume pass (same kernels, same sums:
bitwise equal in our measurement); the trunk then runs once on the stitched half-resolution features.
Slab depth comes from a memory budget; the result is the same network output as one whole pass.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.engines.base import DETECTOR_IO, Engine
from inference.engines.onnx_engine import cpu_session
from inference.nets.dpn3d import DPN26Detector

# The stem's receptive field reaches 4 input slices either side of a half-resolution output (conv1: 1;
# layer1's stride-2 3x3: 1 + 2 * 1; its second block's 3x3 at half resolution: 2 * 1): a halo of 4 makes every
# kept output exact. Even, so each slab starts on a stride-2 boundary.
STEM_HALO = 4
STEM_CHANNELS = 48  # layer1's output width
# Bytes one input voxel of a slab costs in the stem (measured with ONNX Runtime 1.x, arena on, no memory
# pattern: 366 MB for a 32x208x288 slab, 184 B/voxel), with some slack.
STEM_BYTES_PER_VOXEL = 200
MIN_SLAB = 16  # slices: below this the halo (2 x 4 slices) is most of the work


class _Stem(nn.Module):
    def __init__(self, det: DPN26Detector) -> None:
        super().__init__()
        self.conv1, self.bn1, self.layer1 = det.conv1, det.bn1, det.layer1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(F.relu(self.bn1(self.conv1(x))))


class _Trunk(nn.Module):
    """DPN26Detector.forward from layer2 on (kept in step with inference.nets.dpn3d by the parity test)."""

    def __init__(self, det: DPN26Detector) -> None:
        super().__init__()
        self.det = det

    def forward(self, out1: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        d = self.det
        out2 = d.layer2(out1)
        out3 = d.layer3(out2)
        out4 = d.layer4(out3)
        out5 = d.layer5(torch.cat([out3, d.path1(out4)], dim=1))
        out6 = d.layer6(torch.cat([out2, d.path2(out5), coord], dim=1))
        out = d.output(d.drop(out6))
        n, _, dd, h, w = out.shape
        return out.permute(0, 2, 3, 4, 1).reshape(n, dd, h, w, d.n_anchors, -1)


def export_split(model: DPN26Detector, cache_dir: Path, sha: str) -> tuple[Path, Path]:
    """The stem and trunk ONNX files of `model` (a DPN26Detector), exported once per weights into `cache_dir`."""
    paths = (cache_dir / f"detector-stem-{sha[:24]}.onnx", cache_dir / f"detector-trunk-{sha[:24]}.onnx")
    if all(p.is_file() for p in paths):
        return paths
    from inference.export import OPSET

    cache_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    # wrappers in eval mode: the exporter restores each wrapper's mode afterwards, and a new module is in
    # training mode, which would leave the shared layers (batch norm!) of `model` training
    stem, trunk = _Stem(model).eval(), _Trunk(model).eval()
    jobs = [
        (stem, (torch.zeros(1, 1, 32, 32, 32),), ["x"], ["out1"],
         {"x": {0: "b", 2: "d", 3: "h", 4: "w"}, "out1": {0: "b", 2: "d2", 3: "h2", 4: "w2"}}),
        (trunk, (torch.zeros(1, STEM_CHANNELS, 32, 32, 32), torch.zeros(1, 3, 16, 16, 16)),
         ["out1", "coord"], ["out"],
         {"out1": {0: "b", 2: "d", 3: "h", 4: "w"}, "coord": {0: "b", 2: "d4", 3: "h4", 4: "w4"},
          "out": {0: "b", 1: "d4", 2: "h4", 3: "w4"}}),
    ]
    for (module, sample, ins, outs, dyn), path in zip(jobs, paths):
        tmp = path.with_suffix(".onnx.tmp")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(module, sample, str(tmp), dynamo=False, opset_version=OPSET, input_names=ins,
                                  output_names=outs, dynamic_axes=dyn, do_constant_folding=True)
            tmp.replace(path)  # atomic: a half-written graph is never picked up
        finally:
            tmp.unlink(missing_ok=True)
    model.train(was_training)
    return paths


def slab_depth(height: int, width: int, memory_mb: int) -> int:
    """Input slices per stem slab (halo included) that fit `memory_mb`: even (the stem's stride), at least MIN_SLAB."""
    voxels = memory_mb * 2**20 / STEM_BYTES_PER_VOXEL
    return max(MIN_SLAB, int(voxels // (height * width)) // 2 * 2)


def slabs(depth: int, slab: int, halo: int = STEM_HALO) -> list[tuple[int, int, int, int]]:
    """(read_from, read_to, keep_from, keep_to) input slice ranges covering [0, depth).

    Every read range has the same length (`slab`, or `depth` when that is smaller), so every run asks
    ONNX Runtime's arena for the same blocks and it never grows past one slab; kept ranges tile [0, depth) exactly, each at least `halo`
    slices from a read edge that is not the volume's own.
    """
    if depth <= slab:
        return [(0, depth, 0, depth)]
    step = slab - 2 * halo
    if step <= 0 or step % 2:
        raise ValueError(f"slab {slab} too small for a halo of {halo} on each side")
    out = []
    for keep_from in range(0, depth, step):
        keep_to = min(depth, keep_from + step)
        read_from = min(max(0, keep_from - halo), depth - slab)
        out.append((read_from, read_from + slab, keep_from, keep_to))
    return out


class SlabbedDetectorEngine(Engine):
    """The detector as stem (slab by slab) + trunk (once) on ONNX Runtime's CPU provider."""

    def __init__(self, stem: Path, trunk: Path, threads: int | None = None, memory_mb: int = 512) -> None:
        def session(path: Path, arena: bool) -> Any:
            # a memory pattern is a second, planned block next to the arena's: double the memory, no speed gained
            return cpu_session(path, threads, arena=arena, mem_pattern=False)

        # The stem sees same-shaped slabs: its arena is reused and stays at one slab's size. The trunk
        # runs once per series on large tensors: without an arena its memory goes back after the run
        # instead of staying with the process.
        self.stem = session(stem, arena=True)  # EngineUnavailable, naming it, without onnxruntime
        import onnxruntime as ort

        # ... and gives its arena back after the last slab, before the trunk needs the memory
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.trunk = session(trunk, arena=False)
        self.memory_mb = memory_mb
        self.io = DETECTOR_IO
        self.max_batch = 1
        self.name = "onnxruntime-cpu"

    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x, coord = inputs
        _, _, depth, height, width = x.shape
        out1 = np.empty((1, STEM_CHANNELS, depth // 2, height // 2, width // 2), np.float32)
        plan = slabs(depth, slab_depth(height, width, self.memory_mb))
        for i, (read_from, read_to, keep_from, keep_to) in enumerate(plan):
            last = i == len(plan) - 1
            (part,) = self.stem.run(["out1"], {"x": x[:, :, read_from:read_to]}, self._shrink if last else None)
            lo = (keep_from - read_from) // 2
            out1[:, :, keep_from // 2 : keep_to // 2] = part[:, :, lo : lo + (keep_to - keep_from) // 2]
            del part
        (out,) = self.trunk.run([self.io.output_name], {"out1": out1, "coord": coord})
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.stem = self.trunk = None

