"""Load detector/classifier weights: original DeepLung files, the project's own format, bare state dicts.

Original DeepLung checkpoints are ``torch.save({'epoch', 'save_dir', 'state_dict', 'args'})`` written
by PyTorch 0.1-era code: ``args`` is an ``argparse.Namespace``, BatchNorm has no
``num_batches_tracked`` and keys may carry DataParallel's ``module.`` prefix.
"""
from __future__ import annotations

import argparse
import hashlib
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from inference.hashing import file_sha256

Layout = Literal["deeplung", "project", "state_dict"]


class CheckpointError(Exception):
    """The file is not a usable checkpoint; the message says why (shown to users)."""


@dataclass
class LoadedCheckpoint:
    state_dict: "OrderedDict[str, torch.Tensor]"
    sha256: str  # of the file bytes: identifies the weights in reports and engine caches
    layout: Layout
    model_card: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    args: dict[str, Any] = field(default_factory=dict)


def _torch_load(path: Path) -> Any:
    # weights_only keeps a hostile file from running code; Namespace is the one non-tensor class
    # original DeepLung files need.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle (it holds objects other than tensors and argparse.Namespace: {exc}). "
            "If you trust this file, convert it once with torch.load(..., weights_only=False) and save "
            "{'state_dict': model.state_dict()}."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def _strip_prefix(state: dict[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is {type(value).__name__}, not a tensor")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read any supported layout into a plain state dict (not yet matched to a model)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    obj = _torch_load(path)
    sha = file_sha256(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = _strip_prefix(obj["state_dict"])
        if "model_card" in obj:
            card = obj["model_card"]
            if not isinstance(card, dict):
                raise CheckpointError(f"{path}: model_card must be a dict, got {type(card).__name__}")
            return LoadedCheckpoint(state, sha, "project", model_card=dict(card), epoch=obj.get("epoch"))
        args = obj.get("args")
        args_dict = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        return LoadedCheckpoint(state, sha, "deeplung", epoch=obj.get("epoch"), args=args_dict)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return LoadedCheckpoint(_strip_prefix(obj), sha, "state_dict")
    raise CheckpointError(f"{path}: neither a checkpoint dict with 'state_dict' nor a bare state dict")


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Fill what old PyTorch never wrote (BatchNorm num_batches_tracked), then insist on an exact match."""
    expected = model.state_dict()
    out = OrderedDict(state)
    for key, ref in expected.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(ref)
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    wrong = [
        f"{k}: file {tuple(out[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in out and out[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"shape mismatch {len(wrong)} (e.g. {wrong[:2]})")
        raise CheckpointError(f"weights do not fit {type(model).__name__}: " + "; ".join(parts))
    return out


def load_into(model: nn.Module, path: str | Path) -> LoadedCheckpoint:
    """Read ``path`` and load it into ``model`` (strict); returns what was read, including its SHA-256."""
    ckpt = read_checkpoint(path)
    ckpt.state_dict = adapt_state_dict(model, ckpt.state_dict)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return ckpt


def save_project_checkpoint(
    model: nn.Module, path: str | Path, model_card: dict[str, Any], epoch: int | None = None
) -> str:
    """Write the project's own format; returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "model_card": dict(model_card), "epoch": epoch}, path)
    return file_sha256(path)


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over names, shapes and bytes of the weights: identifies an in-memory model (engine caches)."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
