"""The DPN26 detector on ONNX Runtime with its full- and half-resolution layers run slab by slab (exact, bounded memory).

Almost all of the detector's memory is in its full- and half-resolution activations: `conv1`'s output and
the first block's 1x1 expansion, 24 channels each at full resolution (about 1.8 GB apiece for
lidc-idri-0002's 320x208x288 lung box), and layer2's 48-channel 1x1 expansion at half resolution.
So the network is exported as three graphs, run in turn:

- the stem (conv1, bn1, layer1: input -> half-resolution `out1`), over z-slabs of the input with a halo of
  `STEM_HALO` input slices on each side;
- layer2 (`out1` -> quarter-resolution `out2`), over z-slabs of `out1` with a halo of `LAYER2_HALO`
  half-resolution slices;
- the trunk (layer3 on: quarter resolution and below), once, on the stitched `out2`.

Each halo covers its stage's receptive field, so each slab's kept output equals the whole-volume pass
(same kernels, same sums: bitwise equal in our measurement). Slabbing layer2 apart from the stem keeps
each halo small (4 slices of its own input instead of 12 for both at once: the halos are recomputed work)
and takes the half-resolution activations out of the trunk, which then needs little enough memory to
keep ONNX Runtime's arena (without it every activation is faulted in afresh: +60 % trunk time).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.engines.base import DETECTOR_IO, Engine
from inference.engines.onnx_engine import cpu_session
from inference.nets.dpn3d import DPN26Detector
from inference.tempfiles import temporary_beside

# The stem's receptive field reaches 4 input slices either side of a half-resolution output (conv1: 1;
# layer1's stride-2 3x3: 1 + 2 * 1; its second block's 3x3 at half resolution: 2 * 1): a halo of 4 makes every
# kept output exact. Even, so each slab starts on a stride-2 boundary.
STEM_HALO = 4
# layer2's reach in half-resolution slices: its stride-2 3x3 (1) and its second block's 3x3 at quarter
# resolution (2 * 1): 3 below, 2 above; 4, so each slab starts on a stride-2 boundary.
LAYER2_HALO = 4
STEM_CHANNELS = 48  # layer1's output width
LAYER2_CHANNELS = 72  # layer2's output width
# Bytes one input voxel of a slab costs in each slabbed stage (ONNX Runtime 1.x, arena on, no memory pattern;
# measured on lidc-idri-0002, with some slack), and what the trunk needs per voxel of the stem's input.
STEM_BYTES_PER_VOXEL = 200
LAYER2_BYTES_PER_VOXEL = 400  # per half-resolution voxel (48 channels in, 48-channel 1x1 expansion)
TRUNK_BYTES_PER_VOXEL = 64  # per full-resolution voxel: layer6's 224-channel quarter-resolution activations
MIN_SLAB = 16  # slices: below this the halo (2 x 4 slices) is most of the work


class _Stem(nn.Module):
    def __init__(self, det: DPN26Detector) -> None:
        super().__init__()
        self.conv1, self.bn1, self.layer1 = det.conv1, det.bn1, det.layer1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(F.relu(self.bn1(self.conv1(x))))


class _Layer2(nn.Module):
    def __init__(self, det: DPN26Detector) -> None:
        super().__init__()
        self.layer2 = det.layer2

    def forward(self, out1: torch.Tensor) -> torch.Tensor:
        return self.layer2(out1)


class _Trunk(nn.Module):
    """DPN26Detector.forward from layer3 on (kept in step with inference.nets.dpn3d by the parity test)."""

    def __init__(self, det: DPN26Detector) -> None:
        super().__init__()
        self.det = det

    def forward(self, out2: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        d = self.det
        out3 = d.layer3(out2)
        out4 = d.layer4(out3)
        out5 = d.layer5(torch.cat([out3, d.path1(out4)], dim=1))
        out6 = d.layer6(torch.cat([out2, d.path2(out5), coord], dim=1))
        out = d.output(d.drop(out6))
        n, _, dd, h, w = out.shape
        return out.permute(0, 2, 3, 4, 1).reshape(n, dd, h, w, d.n_anchors, -1)


def export_split(model: DPN26Detector, cache_dir: Path, sha: str) -> tuple[Path, Path, Path]:
    """The stem, layer2 and trunk ONNX files of `model` (a DPN26Detector), exported once per weights into `cache_dir`."""
    # "trunk3": the trunk from layer3 on (an older cache's "trunk" started at layer2)
    paths = tuple(cache_dir / f"detector-{part}-{sha[:24]}.onnx" for part in ("stem", "layer2", "trunk3"))
    if all(p.is_file() for p in paths):
        return paths[0], paths[1], paths[2]
    from inference.export import OPSET

    cache_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    # wrappers in eval mode: the exporter restores each wrapper's mode afterwards, and a new module is in
    # training mode, which would leave the shared layers (batch norm!) of `model` training
    stem, layer2, trunk = _Stem(model).eval(), _Layer2(model).eval(), _Trunk(model).eval()
    dyn = {0: "b", 2: "d", 3: "h", 4: "w"}
    half = {0: "b", 2: "d2", 3: "h2", 4: "w2"}
    quarter = {0: "b", 2: "d4", 3: "h4", 4: "w4"}
    jobs = [
        (stem, (torch.zeros(1, 1, 32, 32, 32),), ["x"], ["out1"], {"x": dyn, "out1": half}),
        (layer2, (torch.zeros(1, STEM_CHANNELS, 16, 16, 16),), ["out1"], ["out2"], {"out1": half, "out2": quarter}),
        (trunk, (torch.zeros(1, LAYER2_CHANNELS, 16, 16, 16), torch.zeros(1, 3, 16, 16, 16)),
         ["out2", "coord"], ["out"],
         {"out2": quarter, "coord": quarter, "out": {0: "b", 1: "d4", 2: "h4", 3: "w4"}}),
    ]
    for (module, sample, ins, outs, axes), path in zip(jobs, paths):
        tmp = temporary_beside(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(module, sample, str(tmp), dynamo=False, opset_version=OPSET, input_names=ins,
                                  output_names=outs, dynamic_axes=axes, do_constant_folding=True)
            tmp.replace(path)  # atomic: a half-written graph is never picked up
        finally:
            tmp.unlink(missing_ok=True)
    model.train(was_training)
    return paths[0], paths[1], paths[2]


def slab_depth(height: int, width: int, memory_mb: float, bytes_per_voxel: int = STEM_BYTES_PER_VOXEL) -> int:
    """Slices per slab (halo included) that fit `memory_mb` at `bytes_per_voxel`: even, at least MIN_SLAB."""
    voxels = memory_mb * 2**20 / bytes_per_voxel
    return max(MIN_SLAB, int(voxels // (height * width)) // 2 * 2)


def slabs(depth: int, slab: int, halo: int = STEM_HALO) -> list[tuple[int, int, int, int]]:
    """(read_from, read_to, keep_from, keep_to) slice ranges covering [0, depth) with slabs of at most `slab`.

    As few slabs as fit, their kept ranges as equal as the stride-2 grid allows, so the halos (recomputed
    work) are as few as the budget permits. Every read range has the same length, so every run asks ONNX
    Runtime's arena for the same blocks and it never grows past one slab; kept ranges tile [0, depth)
    exactly, each at least `halo` slices from a read edge that is not the volume's own. `depth`, `slab`
    and `halo` are even.
    """
    if depth <= slab:
        return [(0, depth, 0, depth)]
    if slab - 2 * halo < 2:
        raise ValueError(f"slab {slab} too small for a halo of {halo} on each side")
    n = -(-depth // (slab - 2 * halo))  # slabs needed when each keeps at most slab - 2 halo
    step = -(-depth // (2 * n)) * 2  # kept slices per slab, even: at most slab - 2 halo, as both are even
    read = min(depth, step + 2 * halo)
    out = []
    for keep_from in range(0, depth, step):
        keep_to = min(depth, keep_from + step)
        read_from = min(max(0, keep_from - halo), depth - read)
        out.append((read_from, read_from + read, keep_from, keep_to))
    return out


@dataclass
class _Stage:
    """One slabbed graph: `session` maps (1, C_in, d, h, w) to (1, C_out, d/2, h/2, w/2)."""

    session: Any
    input_name: str
    output_name: str
    channels: int  # of the output
    halo: int  # input slices
    bytes_per_voxel: int  # per input voxel of a slab


class SlabbedDetectorEngine(Engine):
    """The detector as stem and layer2 (slab by slab) + trunk (once) on ONNX Runtime's CPU provider."""

    def __init__(self, stem: Path, layer2: Path, trunk: Path, threads: int | None = None, memory_mb: int = 512) -> None:
        def session(path: Path) -> Any:
            # One arena for the three graphs (onnx_engine._register_shared_arena): what the stem's slabs freed
            # serves layer2 and the trunk without a page fault, so the peak is the largest stage, not their
            # sum. Same-shaped slabs reuse the same blocks. Without an arena every activation is a fresh mmap
            # faulted in page by page (+60 % trunk time); a memory pattern is a second, planned block next to
            # the arena's: more memory, no speed gained.
            return cpu_session(path, threads, arena=True, mem_pattern=False, shared_arena=True)

        self.stages = [  # EngineUnavailable, naming it, without onnxruntime
            _Stage(session(stem), "x", "out1", STEM_CHANNELS, STEM_HALO, STEM_BYTES_PER_VOXEL),
            _Stage(session(layer2), "out1", "out2", LAYER2_CHANNELS, LAYER2_HALO, LAYER2_BYTES_PER_VOXEL),
        ]
        self.trunk = session(trunk)
        import onnxruntime as ort

        self._ort = ort
        # the trunk's run, the series' last, gives the arena back: the node holds no detector memory between series
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.memory_mb = memory_mb
        self.io = DETECTOR_IO
        self.max_batch = 1
        self.name = "onnxruntime-cpu"

    def budget_mb(self, shape: Sequence[int]) -> float:
        """Working memory a slab may use for an input of `shape` (d, h, w): `memory_mb`, or what the trunk
        needs anyway when that is more (larger slabs then cost no peak memory and recompute fewer halos)."""
        d, h, w = shape
        return max(float(self.memory_mb), TRUNK_BYTES_PER_VOXEL * d * h * w / 2**20)

    def _run_stage(self, stage: _Stage, x: np.ndarray, budget_mb: float) -> np.ndarray:
        """`stage` over z-slabs of `x`, stitched: the same array one pass over `x` gives."""
        _, _, depth, height, width = x.shape
        out = np.empty((1, stage.channels, depth // 2, height // 2, width // 2), np.float32)
        plan = slabs(depth, slab_depth(height, width, budget_mb, stage.bytes_per_voxel), stage.halo)
        read = plan[0][1] - plan[0][0]
        # Every slab writes into this one buffer, not into a new array from the arena: an output still held
        # when the trunk's run shrinks the arena would pin its block (up to hundreds of MB). One slab writes
        # straight into `out`: no second copy of it.
        part = out if len(plan) == 1 else np.empty((1, stage.channels, read // 2, height // 2, width // 2), np.float32)
        binding = stage.session.io_binding()
        binding.bind_ortvalue_output(stage.output_name, self._ort.OrtValue.ortvalue_from_numpy(part))
        for read_from, read_to, keep_from, keep_to in plan:
            # a z-range of a (1, C, D, H, W) array: contiguous for C == 1, copied once otherwise
            binding.bind_cpu_input(stage.input_name, np.ascontiguousarray(x[:, :, read_from:read_to]))
            stage.session.run_with_iobinding(binding)
            if part is not out:
                lo = (keep_from - read_from) // 2
                out[:, :, keep_from // 2 : keep_to // 2] = part[:, :, lo : lo + (keep_to - keep_from) // 2]
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        return out

    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x, coord = inputs
        budget = self.budget_mb(x.shape[2:])
        out1 = self._run_stage(self.stages[0], x, budget)
        out2 = self._run_stage(self.stages[1], out1, budget)
        del out1  # 460 MB for lidc-idri-0002: gone before the trunk's activations
        (out,) = self.trunk.run([self.io.output_name], {"out2": out2, "coord": coord}, self._shrink)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.stages = []
        self.trunk = None
