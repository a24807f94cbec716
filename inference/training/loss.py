"""The detector loss (DeepLung): binary cross-entropy on positives plus the hardest negatives, and
smooth L1 on (dz, dy, dx) = (c - anchor_centre) / anchor and dd = log(d / anchor) for positives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def detector_loss(out: torch.Tensor, target: torch.Tensor, hard_per_sample: int = 16) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE on positives + hardest negatives (half each) + smooth L1 on positive regressions."""
    n = out.shape[0]
    out = out.reshape(n, -1, 5)
    target = target.reshape(n, -1, 5)
    logits, labels = out[..., 0], target[..., 0]
    pos = labels > 0.5
    neg = labels == 0
    neg_logits = logits.masked_fill(~neg, -1e4).reshape(-1)
    k = min(int(neg.sum()), hard_per_sample * n)
    hard = torch.topk(neg_logits, k).values if k else neg_logits[:0]
    neg_loss = F.binary_cross_entropy_with_logits(hard, torch.zeros_like(hard)) if k else logits.sum() * 0
    parts = {"neg": float(neg_loss.detach())}
    if pos.any():
        pl = logits[pos]
        pos_loss = F.binary_cross_entropy_with_logits(pl, torch.ones_like(pl))
        reg = F.smooth_l1_loss(out[..., 1:][pos], target[..., 1:][pos], reduction="none").mean(dim=0)
        loss = 0.5 * pos_loss + 0.5 * neg_loss + reg.sum()
        parts.update(pos=float(pos_loss.detach()), reg=float(reg.sum().detach()), n_pos=int(pos.sum()))
    else:
        loss = neg_loss
        parts.update(pos=float("nan"), reg=float("nan"), n_pos=0)
    parts["loss"] = float(loss.detach())
    return loss, parts
