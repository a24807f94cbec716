"""What a reader gets on phantoms: the pipeline's findings matched to the painted nodules, and their Lung-RADS
categories against the categories the painted nodules have.

The pipeline runs on each phantom as on a received series (`analyze_volume`). A finding matches the painted nodule
whose centre lies nearest to its own in that nodule's radii, if within 1.5 of them (a finding's centre is its
segmentation's centroid, which a spiculated or lobulated nodule moves); a second finding of the same nodule is a
repeat, and a finding that matches none is a false positive. A painted nodule of 6 mm or more that no finding
matches is missed. The truth category is `classify_nodule` on what was painted: the type, the mean diameter of the
painted outline on the scan's axial slices (`painted_axes`: where the painted fraction crosses half, on a fine grid;
lobes and the thicker parts of spicules included, as the pipeline's segmentation includes them: a disagreement is then
the pipeline's error, not a different definition of size), the mean diameter of a part-solid nodule's solid part as
painted, calcification and margin. The juxtapleural rule is not applied to it (the painting says nothing about shape
against the pleura), and a nodule on the pleura is measured with its part painted into the chest wall, which the CT
does not show: there the painted category can be higher than what a reader could measure. The exam's truth is the
highest truth category of all its painted nodules, detected or not.

    python -m inference.training.findings_audit --count 20 --first-seed 20000 [--full-size]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from inference.clinical import LungRadsCategory
from inference.phantom import Phantom, PhantomNodule
from inference.training.cases import phantom_seeds_from_command_line
from inference.training.characterize_eval import TYPE_OF_KIND, painted_category
from inference.training.painted_axes import PaintedAxes, painted_axes

if TYPE_CHECKING:
    from inference.findings import SeriesResult

MATCH_RADII = 1.5
MISSED_MIN_DIAMETER_MM = 6.0


@dataclass(frozen=True)
class FindingMatch:
    nodule: int | None  # index of the painted nodule it matches, None: a false positive
    repeat: bool  # a second (or later) finding of that nodule
    category: str  # what the pipeline reported
    truth_category: str | None  # the painted nodule's


@dataclass(frozen=True)
class PhantomAudit:
    seed: int
    findings: tuple[FindingMatch, ...]
    missed: tuple[int, ...]  # painted nodules >= MISSED_MIN_DIAMETER_MM that no finding matches
    exam_category: str
    truth_exam_category: str

    @property
    def agreeing(self) -> int:
        return sum(f.category == f.truth_category for f in self.findings if f.nodule is not None and not f.repeat)

    @property
    def matched(self) -> int:
        return sum(f.nodule is not None and not f.repeat for f in self.findings)


def truth_category(nodule: PhantomNodule, painted: PaintedAxes) -> LungRadsCategory:
    """The Lung-RADS v2022 baseline category of a painted nodule outlined as `painted` (see the module's docstring)."""
    solid = painted.solid_mean_mm if nodule.kind == "part-solid" else None
    return painted_category(TYPE_OF_KIND[nodule.kind], painted.mean_mm, solid, nodule.calcified, nodule.margin)


def audit_result(seed: int, phantom: Phantom, result: SeriesResult) -> PhantomAudit:
    """Match `result`'s findings (the pipeline's on `phantom`) to its painted nodules."""
    # its part in the chest wall too (see the module's docstring)
    truths = [truth_category(n, painted_axes(phantom, None, n)) for n in phantom.nodules]
    centres = np.array([n.center_mm for n in phantom.nodules], float).reshape(-1, 3)
    radii = np.array([n.diameter_mm / 2 for n in phantom.nodules], float)
    seen: set[int] = set()
    matches = []
    for f in result.findings:
        in_radii = np.linalg.norm(centres - np.asarray(f.center_mm, float), axis=1) / radii
        near = int(np.argmin(in_radii)) if len(radii) else -1
        index = near if near >= 0 and in_radii[near] <= MATCH_RADII else None
        matches.append(FindingMatch(index, index in seen, f.lung_rads,
                                    None if index is None else truths[index].value))
        if index is not None:
            seen.add(index)
    missed = tuple(i for i, n in enumerate(phantom.nodules)
                   if n.diameter_mm >= MISSED_MIN_DIAMETER_MM and i not in seen)
    truth_exam = max(truths, key=lambda c: c.rank, default=LungRadsCategory.C1)
    exam = result.exam.lung_rads if result.exam is not None else ""
    return PhantomAudit(seed, tuple(matches), missed, exam, truth_exam.value)


def main(argv: list[str] | None = None) -> int:
    seeds, small = phantom_seeds_from_command_line(argv, __doc__.splitlines()[0] if __doc__ else None)
    from inference.phantom import make_phantom
    from inference.pipeline import LungNodulePipeline
    from inference.training.cases import volume_from_phantom

    pipeline = LungNodulePipeline()
    audits = []
    for seed in seeds:
        phantom = make_phantom(seed, small=small)
        a = audit_result(seed, phantom, pipeline.analyze_volume(volume_from_phantom(phantom)))
        audits.append(a)
        rows = ", ".join(f"{'FP' if f.nodule is None else f.nodule}{' repeat' if f.repeat else ''} "
                         f"{f.category}{'' if f.truth_category in (None, f.category) else f' (truth {f.truth_category})'}"
                         for f in a.findings)
        print(f"seed {seed}: exam {a.exam_category} (truth {a.truth_exam_category}); findings: {rows or 'none'}; "
              f"missed >= {MISSED_MIN_DIAMETER_MM:g} mm: {list(a.missed)}", flush=True)
    findings = [f for a in audits for f in a.findings]
    false_positives = [f.category for f in findings if f.nodule is None]
    print(f"{len(audits)} phantoms, {len(findings)} findings: {sum(a.matched for a in audits)} nodules, "
          f"{sum(f.repeat for f in findings)} repeats, {len(false_positives)} false positives "
          f"(Lung-RADS {', '.join(sorted(false_positives)) or '-'}); "
          f"nodules >= {MISSED_MIN_DIAMETER_MM:g} mm missed: {sum(len(a.missed) for a in audits)}")
    print(f"Lung-RADS of the nodules found as painted: {sum(a.agreeing for a in audits)} of "
          f"{sum(a.matched for a in audits)}; exam category as painted: "
          f"{sum(a.exam_category == a.truth_exam_category for a in audits)} of {len(audits)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
