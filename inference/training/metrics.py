"""Detection and classification metrics: LUNA16 FROC/CPM, ROC/AUC, and phantom matching.

The FROC follows the LUNA16 evaluation rules (../shared/data/README.md) the way the official
``noduleCADEvaluationLUNA16.py`` applies them, vectorised per scan:

- at most ``max_marks`` candidates per scan: those strictly above the probability of the
  (max_marks+1)-th best, so candidates tied at the cut are all dropped, as in the original;
- a candidate hits a finding when its distance is strictly below the finding's radius;
  an excluded finding of diameter -1 counts as 10 mm;
- every candidate hitting an included nodule is consumed; the nodule scores the best of them
  (a candidate hitting two nodules counts for both); the others are neither TP nor FP;
- a candidate hitting only excluded findings is dropped; all remaining candidates are FPs;
- the curve is the ROC of (hit scores vs FP scores) over distinct thresholds, starting at (0, 0),
  with FPs divided by the number of scans and sensitivity by all nodules, missed ones included;
  sensitivities at 1/8..8 FPs/scan are linear interpolation on that curve (flat past its end).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FROC_FPS_PER_SCAN = np.array([0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
EXCLUDED_DEFAULT_DIAMETER_MM = 10.0  # LUNA16: excluded findings without a size (-1)
MAX_MARKS_PER_SCAN = 100


# ---------------------------------------------------------------------------------------------
# Reading the LUNA16 files
# ---------------------------------------------------------------------------------------------


def scan_key(seriesuid: str) -> str:
    """Canonical scan id: numeric ids compare by value ("00188" == "188"), others verbatim.

    The golden case mixes 5-digit zero-padded ids (annotations, scan list) with unpadded ones
    (the DeepLung candidate list); real LUNA16 UIDs contain dots and are kept as they are.
    """
    s = seriesuid.strip()
    return str(int(s)) if s.isdigit() else s


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty file")
    delimiter = "\t" if "\t" in lines[0] else ","
    rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delimiter)]
    return rows[0], rows[1:]


def _column(header: list[str], name: str, path: Path) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise ValueError(f"{path}: no column {name!r} in header {header}") from None


@dataclass(frozen=True)
class PointTable:
    """Points (mm) with one value each (diameter or probability), grouped by scan key."""

    keys: np.ndarray  # (N,) object array of scan keys
    xyz: np.ndarray  # (N, 3) float64
    values: np.ndarray  # (N,) float64

    def by_scan(self) -> dict[str, np.ndarray]:
        """Row indices per scan key, in file order."""
        order = np.argsort(self.keys, kind="stable")
        sorted_keys = self.keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        groups = np.split(order, starts[1:])
        return {sorted_keys[s]: g for s, g in zip(starts, groups)} if len(order) else {}


def read_points(path: str | Path, value_column: str) -> PointTable:
    """Read a LUNA16 csv (comma or tab separated) with seriesuid, coordX/Y/Z and one value."""
    path = Path(path)
    header, rows = _read_rows(path)
    cols = [_column(header, c, path) for c in ("seriesuid", "coordX", "coordY", "coordZ", value_column)]
    if not rows:
        return PointTable(np.array([], dtype=object), np.zeros((0, 3)), np.zeros(0))
    try:
        table = np.array([[r[c] for c in cols] for r in rows], dtype=object)
        xyz = table[:, 1:4].astype(np.float64)
        values = table[:, 4].astype(np.float64)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{path}: malformed row ({exc})") from None
    keys = np.array([scan_key(k) for k in table[:, 0]], dtype=object)
    return PointTable(keys, xyz, values)


def read_seriesuids(path: str | Path) -> list[str]:
    """The scan list: one id per line, no header (a 'seriesuid' header line is tolerated)."""
    ids = [ln.strip().split(",")[0] for ln in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    keys = [scan_key(i) for i in ids if i and i != "seriesuid"]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: duplicate scan ids")
    return keys


# ---------------------------------------------------------------------------------------------
# Matching (shared by LUNA16 and our phantoms)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseMatch:
    """One scan's candidates matched against its truth.

    ``truth_hit[i]`` and ``truth_score[i]`` (best probability of the candidates hitting nodule
    i, NaN if missed) describe the nodules; ``fp_scores`` the candidates that hit nothing;
    ``n_ignored`` counts candidates that were neither (extra hits, hits on excluded findings).
    """

    truth_hit: np.ndarray
    truth_score: np.ndarray
    fp_scores: np.ndarray
    n_ignored: int

    @property
    def n_truth(self) -> int:
        return int(self.truth_hit.size)

    @property
    def n_false_positives(self) -> int:
        return int(self.fp_scores.size)


def luna16_hits(points: np.ndarray, centres: np.ndarray, diameters: np.ndarray) -> np.ndarray:
    """(P, C) bool: point p lies strictly inside the sphere of centre c (LUNA16 hit rule)."""
    if points.size == 0 or centres.size == 0:
        return np.zeros((len(points), len(centres)), dtype=bool)
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return d2 < (np.asarray(diameters, dtype=np.float64)[None, :] / 2.0) ** 2


def match_findings(
    found_centres_mm: np.ndarray | Sequence[Sequence[float]],
    found_probs: np.ndarray | Sequence[float],
    truth_centres_mm: np.ndarray | Sequence[Sequence[float]],
    truth_diameters_mm: np.ndarray | Sequence[float],
    excluded_centres_mm: np.ndarray | Sequence[Sequence[float]] | None = None,
    excluded_diameters_mm: np.ndarray | Sequence[float] | None = None,
) -> CaseMatch:
    """Match one case's findings to its truth with the LUNA16 hit rule (distance < radius)."""
    found = np.asarray(found_centres_mm, dtype=np.float64).reshape(-1, 3)
    probs = np.asarray(found_probs, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth_centres_mm, dtype=np.float64).reshape(-1, 3)
    diam = np.asarray(truth_diameters_mm, dtype=np.float64).reshape(-1)
    if len(found) != len(probs) or len(truth) != len(diam):
        raise ValueError("centres and their probabilities/diameters differ in length")
    hit = luna16_hits(found, truth, diam)  # (F, T)
    truth_hit = np.asarray(hit.any(axis=0))  # numpy types any(axis=...) as scalar-or-array; hit is 2-D
    scored = np.where(hit, probs[:, None], -np.inf)  # (F, T)
    truth_score = np.where(truth_hit, scored.max(axis=0, initial=-np.inf), np.nan)
    # the candidates that give some nodule its score; other hits are neither TP nor FP
    n_scoring = len(np.unique(scored.argmax(axis=0)[truth_hit])) if len(probs) else 0
    used = hit.any(axis=1)
    if excluded_centres_mm is not None and excluded_diameters_mm is not None:
        ex = np.asarray(excluded_centres_mm, dtype=np.float64).reshape(-1, 3)
        ex_d = np.asarray(excluded_diameters_mm, dtype=np.float64).reshape(-1)
        ex_d = np.where(ex_d < 0, EXCLUDED_DEFAULT_DIAMETER_MM, ex_d)
        used |= luna16_hits(found, ex, ex_d).any(axis=1)
    fp = probs[~used]
    return CaseMatch(truth_hit, truth_score, fp, int(len(probs) - len(fp) - n_scoring))


# ---------------------------------------------------------------------------------------------
# FROC
# ---------------------------------------------------------------------------------------------


def froc_curve(
    hit_scores: np.ndarray, n_nodules: int, fp_scores: np.ndarray, n_scans: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps_per_scan, sensitivity, thresholds), one point per distinct score, from (0, 0)."""
    if n_scans <= 0:
        raise ValueError("FROC needs at least one scan")
    scores = np.concatenate([hit_scores, fp_scores]).astype(np.float64)
    is_hit = np.concatenate([np.ones(len(hit_scores)), np.zeros(len(fp_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, is_hit = scores[order], is_hit[order]
    # the last index of each run of tied scores: ties enter the curve together
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else np.array([], int)
    tp = np.cumsum(is_hit)[last]
    fp = np.cumsum(1.0 - is_hit)[last]
    fps = np.r_[0.0, fp / n_scans]
    sens = np.r_[0.0, tp / n_nodules] if n_nodules else np.zeros(len(last) + 1)
    return fps, sens, np.r_[np.inf, scores[last]]


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, points: np.ndarray = FROC_FPS_PER_SCAN) -> np.ndarray:
    """Linear interpolation of the FROC curve; constant at its last value beyond its end.

    The curve has vertical steps (hits entering while the FP count stays), so ``fps`` repeats;
    at such an x the top of the step counts (the best sensitivity at that many FPs), as in the
    LUNA16 script's ``np.interp``. Spelled out so it does not rest on how np.interp treats
    repeated x values.
    """
    fps = np.asarray(fps, dtype=np.float64)
    sens = np.asarray(sens, dtype=np.float64)
    x = np.asarray(points, dtype=np.float64)
    j = np.searchsorted(fps, x, side="right") - 1  # last curve point with fps <= x
    if np.any(j < 0):
        raise ValueError("operating points below the start of the curve")
    nxt = np.minimum(j + 1, len(fps) - 1)
    span = fps[nxt] - fps[j]  # > 0 unless j is the last point
    w = np.divide(x - fps[j], span, out=np.zeros_like(x), where=span > 0)
    return sens[j] + w * (sens[nxt] - sens[j])


@dataclass
class FrocResult:
    fps_per_scan: np.ndarray  # the operating points, 1/8 .. 8
    sensitivities: np.ndarray  # interpolated sensitivity at each operating point
    cpm: float
    curve_fps: np.ndarray  # full FROC curve (x)
    curve_sensitivity: np.ndarray  # full FROC curve (y)
    curve_thresholds: np.ndarray
    n_scans: int
    n_nodules: int
    n_detected: int
    n_false_positives: int
    n_ignored: int = 0
    title: str = "FROC"
    extra: dict[str, float] = field(default_factory=dict)

    def plot_png(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
        ax.plot(self.curve_fps, self.curve_sensitivity, color="C0", lw=1.5, label=f"CPM {self.cpm:.3f}")
        ax.plot(self.fps_per_scan, self.sensitivities, "o", color="C1", label="operating points")
        ax.set_xscale("log", base=2)
        ax.set_xlim(0.125 / 1.2, 8 * 1.2)
        ax.set_ylim(0, 1)
        ax.set_xticks(list(FROC_FPS_PER_SCAN), ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
        ax.set_xlabel("average false positives per scan")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"{self.title}: {self.n_detected}/{self.n_nodules} nodules, {self.n_scans} scans")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        return save_png(fig, path)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def froc_from_matches(cases: Sequence[CaseMatch], title: str = "FROC") -> FrocResult:
    """FROC over matched cases (missed nodules count in the denominator)."""
    n_nodules = sum(c.n_truth for c in cases)
    hit_scores = np.concatenate([c.truth_score[c.truth_hit] for c in cases]) if cases else np.zeros(0)
    fp_scores = np.concatenate([c.fp_scores for c in cases]) if cases else np.zeros(0)
    fps, sens, thr = froc_curve(hit_scores, n_nodules, fp_scores, len(cases))
    at = sensitivity_at(fps, sens)
    return FrocResult(
        fps_per_scan=FROC_FPS_PER_SCAN.copy(),
        sensitivities=at,
        cpm=float(at.mean()),
        curve_fps=fps,
        curve_sensitivity=sens,
        curve_thresholds=thr,
        n_scans=len(cases),
        n_nodules=n_nodules,
        n_detected=int(len(hit_scores)),
        n_false_positives=int(len(fp_scores)),
        n_ignored=sum(c.n_ignored for c in cases),
        title=title,
    )


def sensitivity_at_max_fps(cases: Sequence[CaseMatch], max_fps_per_scan: float = 1.0) -> tuple[float, float]:
    """Best achievable (sensitivity, threshold) with at most ``max_fps_per_scan`` FPs per case.

    A real operating point (a threshold), not an interpolation: what the node would deliver.
    """
    res = froc_from_matches(cases)
    ok = res.curve_fps <= max_fps_per_scan + 1e-12
    i = int(np.flatnonzero(ok)[-1])  # the curve is monotone, so the last allowed point is best
    return float(res.curve_sensitivity[i]), float(res.curve_thresholds[i])


def operating_point(cases: Sequence[CaseMatch], threshold: float) -> tuple[float, float]:
    """(sensitivity, false positives per scan) of the marks with probability >= ``threshold``:
    what a node reporting at that threshold delivers on these cases."""
    n_nodules = sum(c.n_truth for c in cases)
    hits = sum(int(np.sum(c.truth_score[c.truth_hit] >= threshold)) for c in cases)
    fps = sum(int(np.sum(c.fp_scores >= threshold)) for c in cases)
    return (hits / n_nodules if n_nodules else 0.0), fps / max(1, len(cases))


def _top_marks(probs: np.ndarray, max_marks: int) -> np.ndarray:
    """Mask of kept candidates: strictly above the (max_marks+1)-th best probability."""
    if max_marks <= 0 or len(probs) <= max_marks:
        return np.ones(len(probs), dtype=bool)
    threshold = np.sort(probs)[::-1][max_marks]
    return probs > threshold


def froc(
    annotations_csv: str | Path,
    excluded_csv: str | Path,
    seriesuids_csv: str | Path,
    candidates_csv: str | Path,
    max_marks: int = MAX_MARKS_PER_SCAN,
) -> FrocResult:
    """LUNA16 FROC/CPM of a candidate list (see the module docstring for the exact rules)."""
    scans = read_seriesuids(seriesuids_csv)
    ann = read_points(annotations_csv, "diameter_mm")
    exc = read_points(excluded_csv, "diameter_mm")
    cand = read_points(candidates_csv, "probability")
    ann_g, exc_g, cand_g = ann.by_scan(), exc.by_scan(), cand.by_scan()
    empty = np.zeros(0, dtype=np.int64)
    cases = []
    for key in scans:
        ci = cand_g.get(key, empty)
        ci = ci[_top_marks(cand.values[ci], max_marks)]
        ai, ei = ann_g.get(key, empty), exc_g.get(key, empty)
        cases.append(
            match_findings(
                cand.xyz[ci], cand.values[ci], ann.xyz[ai], ann.values[ai], exc.xyz[ei], exc.values[ei]
            )
        )
    result = froc_from_matches(cases, title=Path(candidates_csv).stem)
    known = set(scans)
    result.extra["candidates_outside_scan_list"] = float(sum(k not in known for k in cand_g))
    return result


def format_froc_report(result: FrocResult) -> str:
    lines = [
        f"FPs/scan {fp:g}: sensitivity {s:.3f}" for fp, s in zip(result.fps_per_scan, result.sensitivities)
    ]
    lines.append(f"CPM {result.cpm:.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# ROC (malignancy classification)
# ---------------------------------------------------------------------------------------------


@dataclass
class RocResult:
    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    threshold: float  # the operating threshold of the confusion matrix
    confusion: np.ndarray  # [[TN, FP], [FN, TP]]
    accuracy: float
    sensitivity: float
    specificity: float

    def plot_png(self, path: str | Path, title: str = "ROC") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
        ax.plot(self.fpr, self.tpr, color="C0", lw=1.5, label=f"AUC {self.auc:.3f}")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        ax.plot(1 - self.specificity, self.sensitivity, "o", color="C1", label=f"threshold {self.threshold:g}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(title)
        ax.legend(loc="lower right")
        return save_png(fig, path)


def roc(y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray, threshold: float = 0.5) -> RocResult:
    """ROC curve and AUC (ties count half), plus the confusion matrix at ``score >= threshold``."""
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if len(y) != len(s) or len(y) == 0:
        raise ValueError("y_true and y_score must be non-empty and of equal length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both positive and negative cases")
    fpr_pts, tpr_pts, thr = froc_curve(s[y], n_pos, s[~y], 1)
    fpr = fpr_pts / n_neg  # froc_curve counts FPs per "scan"; one scan -> raw counts
    auc = float(np.trapezoid(tpr_pts, fpr))
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn, fn = n_neg - fp, n_pos - tp
    return RocResult(
        auc=auc,
        fpr=fpr,
        tpr=tpr_pts,
        thresholds=thr,
        threshold=threshold,
        confusion=np.array([[tn, fp], [fn, tp]]),
        accuracy=(tp + tn) / len(y),
        sensitivity=tp / n_pos,
        specificity=tn / n_neg,
    )
