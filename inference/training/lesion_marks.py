"""How often the detector marks one lesion more than once among the candidates the pipeline reports, and whether
`detect.one_per_lesion` ever drops a nodule: on phantoms, whose nodules are known.

For each phantom the packaged detector runs as the pipeline runs it; of its candidates over the weights' report
threshold, `one_per_lesion` keeps one per lesion. A dropped mark is counted as a repeat, and as one of the findings
it was before when it stood among the first MAX_FINDINGS. A painted nodule that a dropped mark hits (LUNA16 rule:
within its radius) and no kept mark hits would be a nodule the rule lost; and for marks of two different painted
nodules, the distance between their centres over the rule's reach (`detect.same_lesion_reach_mm`) says how near the
rule came to taking them for one (1 or less: it did).

    python -m inference.training.lesion_marks --count 20 --first-seed 20000 [--full-size]
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from inference.detect import Candidate, detect, one_per_lesion, same_lesion_reach_mm
from inference.engines.base import DetectorEngine
from inference.training.cases import phantom_case, phantom_seeds_from_command_line
from inference.training.metrics import luna16_hits


@dataclass(frozen=True)
class SeedMarks:
    seed: int
    reported: int  # candidates over the report threshold
    dropped: int  # of those, marks of a lesion already kept
    dropped_findings: int  # dropped marks among the first `max_findings`: extra findings before one_per_lesion
    nodules_lost: tuple[int, ...]  # painted nodules hit by a dropped mark and by no kept one
    nearest_distinct: float  # min distance / reach over pairs of marks hitting different nodules (inf: no pair)


def _hits(marks: list[Candidate], centres: np.ndarray, diameters: np.ndarray) -> list[set[int]]:
    """Per mark, the painted nodules it hits."""
    if not marks or not len(centres):
        return [set() for _ in marks]
    hits = luna16_hits(np.array([m.zyx for m in marks], float), centres, diameters)
    return [set(np.flatnonzero(row).tolist()) for row in hits]


def _hit_nodules(marks: list[Candidate], centres: np.ndarray, diameters: np.ndarray) -> set[int]:
    return set().union(*_hits(marks, centres, diameters))


def _nearest_distinct(marks: list[Candidate], centres: np.ndarray, diameters: np.ndarray) -> float:
    hits = _hits(marks, centres, diameters)
    ratios = [math.dist(a.zyx, b.zyx) / same_lesion_reach_mm(a, b)
              for (a, ha), (b, hb) in itertools.combinations(zip(marks, hits), 2) if ha and hb and not ha & hb]
    return min(ratios, default=math.inf)


def seed_marks(seed: int, detector: DetectorEngine, report_logit: float, max_findings: int,
               small: bool = True) -> SeedMarks:
    case = phantom_case(seed, small=small)
    reported = [c for c in detect(detector, case.image) if c.logit > report_logit]
    kept = one_per_lesion(reported)
    dropped = [c for c in reported if c not in kept]
    centres, diameters = case.nodules[:, :3], case.nodules[:, 3]
    lost = _hit_nodules(dropped, centres, diameters) - _hit_nodules(kept, centres, diameters)
    return SeedMarks(seed, len(reported), len(dropped), sum(c in dropped for c in reported[:max_findings]),
                     tuple(sorted(lost)), _nearest_distinct(reported, centres, diameters))


def main(argv: list[str] | None = None) -> int:
    seeds, small = phantom_seeds_from_command_line(argv, __doc__.splitlines()[0] if __doc__ else None)
    from inference.pipeline import LungNodulePipeline

    pipeline = LungNodulePipeline()
    rows = []
    for seed in seeds:
        row = seed_marks(seed, pipeline.detector, pipeline.report_logit, pipeline.max_findings, small=small)
        rows.append(row)
        print(f"seed {seed}: {row.reported} reported marks, {row.dropped} repeats dropped "
              f"({row.dropped_findings} among the first {pipeline.max_findings}), nodules lost {list(row.nodules_lost)}, "
              f"nearest marks of two nodules {row.nearest_distinct:.2f} x the reach",
              flush=True)
    print(f"{len(rows)} phantoms: {sum(r.dropped for r in rows)} repeats dropped on {sum(r.dropped > 0 for r in rows)}; "
          f"{sum(r.dropped_findings for r in rows)} were findings on {sum(r.dropped_findings > 0 for r in rows)}; "
          f"nodules lost: {sum(len(r.nodules_lost) for r in rows)}; nearest marks of two nodules "
          f"{min((r.nearest_distinct for r in rows), default=math.inf):.2f} x the reach")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
