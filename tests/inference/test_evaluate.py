"""LUNA16 FROC (golden case and hand-built edge cases), ROC/AUC and phantom matching."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.training.metrics import (
    FROC_FPS_PER_SCAN,
    _top_marks,
    format_froc_report,
    froc,
    froc_from_matches,
    match_findings,
    roc,
    scan_key,
    sensitivity_at,
    operating_point,
    sensitivity_at_max_fps,
)
from tests.conftest import LUNA16_EVAL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def golden():
    if not LUNA16_EVAL.is_dir():
        pytest.fail(f"shared test data missing at {LUNA16_EVAL}")
    return froc(
        LUNA16_EVAL / "newannotations.csv",
        LUNA16_EVAL / "newannotations_excluded.csv",
        LUNA16_EVAL / "newseriesuids.csv",
        LUNA16_EVAL / "dpn26bs32.csv",
    )


def test_golden_deeplung_dpn26_cpm(golden):
    assert golden.n_scans == 888
    assert golden.n_nodules == 1186
    assert [round(s, 3) for s in golden.sensitivities] == [0.692, 0.769, 0.824, 0.865, 0.893, 0.917, 0.933]
    assert round(golden.cpm, 3) == 0.842
    assert golden.extra["candidates_outside_scan_list"] == 0


def test_golden_report_format(golden):
    lines = format_froc_report(golden).splitlines()
    assert lines[0] == "FPs/scan 0.125: sensitivity 0.692"
    assert lines[3] == "FPs/scan 1: sensitivity 0.865"
    assert lines[6] == "FPs/scan 8: sensitivity 0.933"
    assert lines[-1] == "CPM 0.842"
    assert len(lines) == 8


def test_golden_plot_png(golden, tmp_path):
    out = golden.plot_png(tmp_path / "froc.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 5000


def test_scan_key_matches_padded_and_unpadded_ids():
    assert scan_key("00188") == scan_key("188") == "188"
    assert scan_key("00000") == scan_key("0")
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
    assert scan_key(uid) == uid


def _write(path: Path, header: str, rows: list[str], sep: str = ",") -> Path:
    path.write_text("\n".join([header.replace(",", sep)] + [r.replace(",", sep) for r in rows]) + "\n")
    return path


def test_froc_rules_on_hand_built_case(tmp_path):
    """Double hits, excluded findings, strict radius, ties and missed nodules, computed by hand."""
    ann = _write(
        tmp_path / "ann.csv",
        "seriesuid,coordX,coordY,coordZ,diameter_mm",
        [
            "00001,0,0,0,10",  # N1
            "00001,4,0,0,10",  # N2 overlaps N1
            "00001,100,100,100,6",  # N3: missed
            "00002,0,0,0,8",  # N4
            "00009,0,0,0,8",  # not in the scan list: ignored
        ],
    )
    exc = _write(tmp_path / "exc.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm", ["00001,50,0,0,-1"])
    uids = tmp_path / "uids.csv"
    uids.write_text("00001\r\n00002\r\n")
    cands = _write(
        tmp_path / "cands.csv",
        "seriesuid,coordX,coordY,coordZ,probability",
        [
            "1,2,0,0,0.9",  # hits N1 and N2: counts for both
            "1,0,0,1,0.5",  # also hits N1, weaker: ignored, not a FP
            "1,52,0,0,0.8",  # inside the excluded finding (-1 -> 10 mm): dropped
            "1,-30,0,0,0.7",  # FP
            "1,100,100,103,0.95",  # exactly on N3's radius: not a hit -> FP
            "2,0,0,3.9,0.6",  # hits N4
            "2,200,0,0,0.6",  # FP tied with the hit
        ],
        sep="\t",
    )
    r = froc(ann, exc, uids, cands)
    assert (r.n_scans, r.n_nodules, r.n_detected, r.n_false_positives, r.n_ignored) == (2, 4, 3, 3, 2)
    # curve: FP .95 -> (0.5, 0); hits .9 -> (0.5, 0.5); FP .7 -> (1, .5); hit+FP .6 -> (1.5, .75)
    np.testing.assert_allclose(r.curve_fps, [0, 0.5, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(r.curve_sensitivity, [0, 0, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(r.sensitivities, [0, 0, 0.5, 0.5, 0.75, 0.75, 0.75])
    assert r.cpm == pytest.approx(3.25 / 7)


def test_top_marks_drops_ties_at_the_cut_like_the_original():
    probs = np.array([0.9, 0.5, 0.5, 0.1])
    assert _top_marks(probs, 2).tolist() == [True, False, False, False]
    assert _top_marks(probs, 3).tolist() == [True, True, True, False]
    assert _top_marks(probs, 4).all()


def test_interpolation_takes_top_of_vertical_step_and_is_flat_past_end():
    fps = np.array([0.0, 0.25, 0.25, 1.0])
    sens = np.array([0.0, 0.2, 0.6, 0.8])
    got = sensitivity_at(fps, sens, np.array([0.125, 0.25, 0.5, 1.0, 8.0]))
    np.testing.assert_allclose(got, [0.1, 0.6, 0.6 + 0.2 / 3, 0.8, 0.8])


def test_match_findings_and_sensitivity_at_one_fp_per_case():
    truth = [[10.0, 10.0, 10.0], [40.0, 40.0, 40.0]]
    case1 = match_findings([[11, 10, 10], [70, 70, 70]], [0.9, 0.8], truth, [6.0, 6.0])
    np.testing.assert_array_equal(case1.truth_hit, [True, False])
    assert case1.truth_score[0] == 0.9 and np.isnan(case1.truth_score[1])
    assert case1.fp_scores.tolist() == [0.8]
    case2 = match_findings([[0, 0, 0], [40, 40, 42], [5, 5, 5]], [0.95, 0.3, 0.7], [[40, 40, 40]], [5.0])
    assert case2.truth_hit.tolist() == [True] and case2.n_false_positives == 2
    case3 = match_findings(np.zeros((0, 3)), [], [[0, 0, 0]], [4.0])  # nothing found
    assert case3.truth_hit.tolist() == [False]
    cases = [case1, case2, case3]
    # thresholds: .95 FP, .9 hit, .8 FP, .7 FP, .3 hit; 4 nodules, 3 cases (1 FP/case = 3 FPs)
    sens, thr = sensitivity_at_max_fps(cases, 1.0)
    assert sens == pytest.approx(0.5) and thr == pytest.approx(0.3)
    sens, thr = sensitivity_at_max_fps(cases, 0.5)
    assert sens == pytest.approx(0.25) and thr == pytest.approx(0.9)
    assert froc_from_matches(cases).n_nodules == 4
    # what a node reporting at a fixed threshold delivers: hits and FPs at or above it
    assert operating_point(cases, 0.3) == (pytest.approx(0.5), pytest.approx(1.0))
    assert operating_point(cases, 0.85) == (pytest.approx(0.25), pytest.approx(1 / 3))
    assert operating_point(cases, 0.99) == (0.0, 0.0)


def test_roc_auc_and_confusion_matrix(tmp_path):
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.6, 0.9]
    r = roc(y, s, threshold=0.5)
    # pairs (pos, neg): 0.35 beats 0.1 only; 0.8 and 0.9 beat all three -> 7/9
    assert r.auc == pytest.approx(7 / 9)
    assert r.confusion.tolist() == [[2, 1], [1, 2]]
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.sensitivity == pytest.approx(2 / 3) and r.specificity == pytest.approx(2 / 3)
    assert r.fpr[0] == 0 and r.fpr[-1] == 1 and r.tpr[-1] == 1
    assert roc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]).auc == pytest.approx(0.5)  # ties count half
    assert r.plot_png(tmp_path / "roc.png").read_bytes()[:8] == PNG_MAGIC


def test_roc_agrees_with_pairwise_auc_on_random_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc(y, s).auc == pytest.approx(pairwise, abs=1e-12)


def test_operating_points_are_the_luna16_grid():
    assert FROC_FPS_PER_SCAN.tolist() == [0.125, 0.25, 0.5, 1, 2, 4, 8]


def test_the_report_threshold_is_scored_on_the_findings_a_node_reports(monkeypatch):
    # hand-set marks (the detector itself is exercised by the phantom tests): a 24 mm nodule marked twice (its
    # repeat 13 mm off the centre, outside its radius: a false positive among raw marks, the same lesion for the
    # node), five 8 mm nodules, one false mark. A node reports one finding per lesion and the five most probable.
    import inference.detect
    from inference.detect import Candidate
    from inference.training.cases import Case
    from inference.training.evaluation import evaluate_detector_on_cases

    big = (60.0, 60.0, 60.0, 24.0)
    small = [(20.0, 20.0, 20.0 + 25 * i, 8.0) for i in range(5)]
    nodules = np.array([big, *small])
    marks = [(60.0, 60.0, 73.0, 12.0, 0.9), (60.0, 60.0, 60.0, 24.0, 0.95), (100.0, 100.0, 100.0, 6.0, 0.5)]
    marks += [(z, y, x, d, 0.8 - 0.05 * i) for i, (z, y, x, d) in enumerate(small)]
    candidates = [Candidate((z, y, x), d, float(np.log(p / (1 - p))), p) for z, y, x, d, p in marks]
    candidates.sort(key=lambda c: -c.probability)
    monkeypatch.setattr(inference.detect, "detect", lambda engine, image, mode="whole": candidates)
    case = Case("hand", np.zeros((8, 8, 8), np.uint8), nodules, np.full(6, -1, np.int8), np.zeros((0, 3), int))

    ev = evaluate_detector_on_cases(None, [case], report_threshold=0.3, max_findings=5)  # type: ignore[arg-type]
    # reported: the big nodule once, then the four most probable small ones (the fifth and the false mark cut)
    assert ev.sensitivity_6mm_at_report_threshold == pytest.approx(5 / 6)
    assert ev.fps_per_scan_at_report_threshold == 0.0
    # the raw marks, as the FROC counts them: all six nodules hit, the repeat and the false mark two FPs
    assert operating_point([match_findings([c.zyx for c in candidates], [c.probability for c in candidates],
                                           nodules[:, :3], nodules[:, 3])], 0.3) == (1.0, 2.0)
    # calibration still counts every mark: the lowest threshold with at most one FP admits the repeat (0.9)
    assert ev.threshold_6mm_at_1fp == pytest.approx(0.6) and ev.sensitivity_6mm_at_1fp == 1.0
