"""The crop evaluation (`inference.training.characterize_crops`) gives `characterize_eval`'s figures: the same truth, the
same drawn diameters and the same measurements, nodule by nodule."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.phantom.added_noise import raised_to
from inference.phantom.build import NOISE_SD_HU
from inference.training import characterize_crops as crops
from inference.training.characterize_eval import Evaluation, NoduleResult, evaluate

SEED = 7001  # a small tuning phantom with five nodules >= 6 mm: solid, part-solid and ground glass, free and attached


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("crops")
    assert crops.build_seed(SEED, False, where, 6.0) == 5
    return where


def test_crops_measure_as_the_whole_phantom_does(built: Path) -> None:
    whole = {(r.seed, r.index): r for r in evaluate([SEED]).counted}
    cropped = crops.run(built, ["small"], jobs=1)
    assert sorted((r.seed, r.index) for r in cropped) == sorted(whole)
    assert len({r.truth_type for r in cropped}) >= 2
    for r in cropped:
        w = whole[(r.seed, r.index)]
        # the truth and the simulated detector diameter come with the crop
        assert r.truth_volume_mm3 == pytest.approx(w.truth_volume_mm3, rel=1e-9)
        assert r.detector_diameter_mm == pytest.approx(w.detector_diameter_mm, rel=1e-9)
        assert r.site == w.site
        # what is measured on the crop is what is measured on the whole phantom
        assert r.volume_mm3 == pytest.approx(w.volume_mm3, rel=1e-6)
        assert (r.predicted_type, r.margin, r.calcified) == (w.predicted_type, w.margin, w.calcified)
        # the small phantoms' slices (2.5-3 mm), recorded for the report's few-slices caveat
        assert r.slice_mm == w.slice_mm and 2.5 <= r.slice_mm <= 3.0
    table = crops.summary(cropped)
    assert table["small"]["counted"] == table["all"]["counted"] == 5
    assert table["small"]["volume_within"] == sum(abs(w.volume_error) <= 0.15 for w in whole.values())


def test_a_run_with_noise_adds_it_to_the_level_asked_and_is_repeatable(built: Path) -> None:
    path = crops.crop_paths(built, ["small"])[0]
    with np.load(path) as z:
        hu = z["hu"]
    noisy = raised_to(hu, 70.0, 1)
    assert np.std(noisy - hu) == pytest.approx(np.sqrt(70.0 ** 2 - NOISE_SD_HU ** 2), rel=0.01)
    assert raised_to(hu, NOISE_SD_HU, 1) is hu  # at or below the phantoms' own noise, nothing is added
    assert crops.measure_crop(path, 70.0) == crops.measure_crop(path, 70.0)


def test_compare_names_what_a_change_fixed_and_broke(built: Path, tmp_path: Path) -> None:
    before = crops.run(built, ["small"], jobs=1)
    crops.save(before, tmp_path / "before.json", 0.0)
    assert crops.load(tmp_path / "before.json") == before
    first, second, rest = before[0], before[1], before[2:]

    def with_volume(r: NoduleResult, share: float, **changes: str) -> NoduleResult:
        return replace(r, volume_mm3=r.truth_volume_mm3 * share, **changes)

    text = crops.compare([with_volume(first, 1.0), with_volume(second, 0.7), *rest],
                         [with_volume(first, 1.3), with_volume(second, 1.01, predicted_type="ground_glass"), *rest])
    assert text.startswith("2 nodules read differently")
    assert f"{first.seed}:{first.index}" in text and "+30.0%  broken" in text
    assert f"{second.seed}:{second.index}" in text and "-30.0% -> ground_glass +1.0%  fixed" in text


def test_every_seed_belongs_to_one_set() -> None:
    assert crops.set_of_seed(14000) == "tuning" and crops.set_of_seed(24039) == "fresh"
    assert crops.set_of_seed(13019) == "small"
    with pytest.raises(ValueError, match="seed 11000"):
        crops.set_of_seed(11000)


def _result(kind: str, diameter_mm: float, error: float, contact: float = 0.0, slice_mm: float = 2.5) -> NoduleResult:
    truth = float(np.pi / 6 * diameter_mm**3)
    return NoduleResult(seed=7000, index=0, truth_type=kind, predicted_type=kind, diameter_mm=diameter_mm,
                        truth_volume_mm3=truth, volume_mm3=truth * (1 + error), truth_margin="smooth", margin="smooth",
                        truth_calcified=False, calcified=False, attached_to=None, juxtapleural=False,
                        segmentation_ok=True, contact_share=contact, slice_mm=slice_mm)


def test_volumes_are_counted_by_the_caveat_the_report_gives_them() -> None:
    """The evaluation splits the volume figure by the note the report attaches: contact (outline half or more on
    other structures), few slices (a non-solid nodule under 4 slices across: 7 mm of ground glass measured at 7 mm on
    2.5 mm slices is 2.8 slices) or none; each result falls in exactly one group."""
    results = [
        _result("ground_glass", 7.0, +0.30),  # 2.8 slices: few slices, out of 15 %
        _result("part_solid", 7.0, +0.05),  # few slices, within
        _result("solid", 7.0, +0.30),  # a solid nodule gets no few-slices caveat: none, out
        _result("ground_glass", 7.0, +0.02, slice_mm=1.25),  # 5.6 slices: none, within
        _result("ground_glass", 10.0, +0.01),  # 4.01 slices, not under 4: none, within
        _result("part_solid", 7.0, -0.40, contact=0.5),  # contact wins over few slices: contact, out
        _result("solid", 12.0, +0.10, contact=0.7),  # contact, within
    ]
    assert [r.size_caveat for r in results] == ["few slices", "few slices", None, None, None, "contact", "contact"]
    ev = Evaluation(results)
    assert ev.within_by_caveat() == {"contact": (1, 2), "few slices": (1, 2), "failed": (0, 0), "none": (2, 3)}
    assert ev.to_json()["volume_error"]["within_15pct_by_caveat"] == {
        "contact": [1, 2], "few slices": [1, 2], "failed": [0, 0], "none": [2, 3]}
    # no segmentation: the finding says why and gives the detector's size, whatever its contact or slices
    assert replace(results[0], segmentation_ok=False).size_caveat == "failed"
    # results saved before the slice thickness was recorded read 0: no few-slices caveat
    assert replace(results[0], slice_mm=0.0).size_caveat is None
