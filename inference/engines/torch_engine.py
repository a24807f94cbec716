"""PyTorch engine: CPU fp32, or CUDA with fp16 autocast (BatchNorm and the head stay fp32 under autocast)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from inference.engines.base import Engine, NetworkIO


class TorchEngine(Engine):
    def __init__(
        self,
        module: nn.Module,
        io: NetworkIO,
        device: str = "cpu",
        fp16: bool = True,
        max_batch: int = 1,
        threads: int | None = None,
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            from inference.engines.base import EngineUnavailable

            raise EngineUnavailable("torch engine: device 'cuda' asked for but torch sees no CUDA GPU")
        if threads is not None and device == "cpu":
            torch.set_num_threads(threads)  # process-wide in torch; the node runs one model at a time
        self.io = io
        self.device = torch.device(device)
        self.fp16 = fp16 and self.device.type == "cuda"
        self.max_batch = max_batch
        self.module = module.to(self.device).eval()
        precision = "fp16" if self.fp16 else "fp32"
        self.name = "torch-cpu" if self.device.type == "cpu" else f"torch-cuda-{precision}"

    @torch.inference_mode()
    def _forward(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        tensors = [torch.from_numpy(a).to(self.device, non_blocking=True) for a in inputs]
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.fp16):
            out = self.module(*tensors)
        return out.float().cpu().numpy()

    def close(self) -> None:
        if self.device.type == "cuda":
            self.module.to("cpu")
            torch.cuda.empty_cache()
