"""Matching: each current nodule paired with at most one prior nodule, after registration.

Cost = the distance (mm) between the current centre and the registered prior centre. A pair is allowed
only within a size-aware gate: GATE_BASE_MM (registration residual, breathing displacement of a lower
lobe nodule between two breath-holds, centroid jitter of a segmentation) plus the larger of the two
radii (a large or growing nodule's centroid moves with its shape). The assignment is one-to-one and
minimises the total distance (scipy.optimize.linear_sum_assignment on the cost matrix with the
gate as infinity); unmatched current nodules are new, unmatched prior nodules resolved.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

GATE_BASE_MM = 10.0
_FORBIDDEN = 1e9  # linear_sum_assignment needs finite costs when a row may have no allowed pair


@dataclass(frozen=True)
class Point:
    """A nodule for matching: centre (LPS mm, in its own exam's frame) and mean diameter (mm)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Match:
    pairs: tuple[tuple[int, int], ...]  # (current index, prior index)
    new: tuple[int, ...]  # current indices without a prior
    resolved: tuple[int, ...]  # prior indices without a current
    distances_mm: tuple[float, ...]  # per pair, after registration


def gate_mm(current: Point, prior: Point) -> float:
    return GATE_BASE_MM + max(current.diameter_mm, prior.diameter_mm) / 2


def match(current: Sequence[Point], prior_registered: Sequence[Point]) -> Match:
    """Pairs of current and (registered) prior nodules: one-to-one, minimum total distance, within the gate."""
    if not current or not prior_registered:
        return Match((), tuple(range(len(current))), tuple(range(len(prior_registered))), ())
    cur = np.array([c.center_mm for c in current], float)
    pri = np.array([p.center_mm for p in prior_registered], float)
    dist = np.linalg.norm(cur[:, None, :] - pri[None, :, :], axis=-1)
    gate = np.array([[gate_mm(c, p) for p in prior_registered] for c in current])
    cost = np.where(dist <= gate, dist, _FORBIDDEN)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] < _FORBIDDEN]
    matched_cur = {r for r, _ in pairs}
    matched_pri = {c for _, c in pairs}
    return Match(
        pairs=tuple(pairs),
        new=tuple(i for i in range(len(current)) if i not in matched_cur),
        resolved=tuple(j for j in range(len(prior_registered)) if j not in matched_pri),
        distances_mm=tuple(float(dist[r, c]) for r, c in pairs),
    )
