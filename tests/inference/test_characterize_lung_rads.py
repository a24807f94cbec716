"""The Lung-RADS category of a phantom nodule as painted (characterize_eval.NoduleResult.painted_lung_rads), against
which the evaluation scores the category the report gives. Expected values by hand from the ACR Lung-RADS v2022
table (baseline): solid < 6 mm 2, 6 to < 8 mm 3, 8 to < 15 mm 4A, >= 15 mm 4B (volume 113 / 268 / 1767 mm3);
part-solid >= 6 mm with a solid component < 6 mm 3, 6 to < 8 mm 4A, >= 8 mm 4B; ground glass < 30 mm 2, >= 30 mm 3;
a benign calcification 1; a category 3 or 4 nodule with spiculation 4X."""
from __future__ import annotations

import math

import pytest

from inference.training.characterize_eval import Evaluation, NoduleResult


def painted(kind: str, diameter: float, *, solid: float = 0.0, volume: float = 0.0, margin: str = "smooth",
            calcified: bool = False) -> NoduleResult:
    return NoduleResult(seed=0, index=0, truth_type=kind, predicted_type="", diameter_mm=diameter,
                        truth_volume_mm3=volume or math.pi / 6 * diameter ** 3, volume_mm3=0.0, truth_margin=margin,
                        margin="", truth_calcified=calcified, calcified=False, attached_to=None, juxtapleural=False,
                        segmentation_ok=False, solid_diameter_mm=solid)


@pytest.mark.parametrize("nodule, category", [
    (painted("solid", 5.9), "2"), (painted("solid", 6.0), "3"), (painted("solid", 7.9), "3"),
    (painted("solid", 8.0), "4A"), (painted("solid", 14.9), "4A"), (painted("solid", 15.0), "4B"),
    (painted("solid", 8.0, margin="spiculated"), "4X"), (painted("solid", 7.0, margin="spiculated"), "4X"),
    (painted("solid", 5.0, margin="spiculated"), "2"),  # 4X only from 3 or 4
    (painted("solid", 20.0, calcified=True), "1"),
    (painted("part_solid", 10.0, solid=5.9), "3"), (painted("part_solid", 10.0, solid=6.0), "4A"),
    (painted("part_solid", 10.0, solid=8.0), "4B"), (painted("part_solid", 5.9, solid=3.0), "2"),
    (painted("ground_glass", 29.9), "2"), (painted("ground_glass", 30.0), "3"),
])
def test_a_painted_nodules_category_by_its_diameters(nodule: NoduleResult, category: str) -> None:
    assert nodule.painted_lung_rads() == category


@pytest.mark.parametrize("nodule, category", [
    # v2022 reports a volume to the nearest mm3: 112.4 is 112 (2), 112.5 is 113 (3)
    (painted("solid", 6.0, volume=112.4), "2"), (painted("solid", 6.0, volume=112.5), "3"),
    (painted("solid", 8.0, volume=267.4), "3"), (painted("solid", 8.0, volume=268.0), "4A"),
    (painted("solid", 15.0, volume=1767.0), "4B"),
    # the painted volume decides, not the diameter: a lobulated 7.9 mm core painted to 300 mm3
    (painted("solid", 7.9, volume=300.0), "4A"),
    # a part-solid nodule's solid core is a sphere of its painted diameter: 6.0 mm is 113.1 mm3 (4A), 5.9 mm 107.5 (3)
    (painted("part_solid", 12.0, solid=6.0), "4A"), (painted("part_solid", 12.0, solid=5.9), "3"),
])
def test_a_painted_nodules_category_by_its_volumes(nodule: NoduleResult, category: str) -> None:
    assert nodule.painted_lung_rads(by_volume=True) == category


def test_the_category_confusion_counts_painted_against_reported_and_leaves_out_uncategorised() -> None:
    from dataclasses import replace

    read_right = replace(painted("solid", 9.0), lung_rads="4A", lung_rads_by_volume="4A")
    read_small = replace(painted("solid", 8.2), lung_rads="3", lung_rads_by_volume="")  # no volume measured
    saved_before = painted("solid", 7.0)  # a result saved before the category was recorded
    ev = Evaluation(results=[read_right, read_small, saved_before])
    m = ev.confusion("lung_rads")
    labels = ("1", "2", "3", "4A", "4B", "4X")
    assert m[labels.index("4A"), labels.index("4A")] == 1 and m[labels.index("4A"), labels.index("3")] == 1
    assert m.sum() == 2 and ev.accuracy("lung_rads") == 0.5
    assert ev.confusion("lung_rads_by_volume").sum() == 1
    assert ev.to_json()["lung_rads"]["labels"] == list(labels)


def test_a_part_solid_nodule_without_its_recorded_core_is_not_categorised() -> None:
    # results saved before the painted core was recorded: no truth to score against, and not counted
    old = painted("part_solid", 10.0)
    assert old.painted_lung_rads() == "" and old.painted_lung_rads(by_volume=True) == ""
    from dataclasses import replace

    assert Evaluation(results=[replace(old, lung_rads="4A")]).confusion("lung_rads").sum() == 0


def test_a_part_solid_nodules_solid_part_is_painted_half_a_ramp_beyond_its_core() -> None:
    # the truth of a part-solid nodule's solid component is what the generator paints, not its core's diameter:
    # solid tissue wherever the core's partial-volume ramp is above 0. On a 0.05 mm grid (ramp 0.6 mm) the solid
    # part of a 6 mm core, measured as the disc of equal area on its central plane, is 6.6 mm across
    import numpy as np

    from inference.phantom.model import PhantomNodule
    from inference.phantom.nodules import paint_nodule, painted_solid_diameter_mm

    nodule = PhantomNodule(center_mm=(0.0, 0.0, 0.0), diameter_mm=14.0, kind="part-solid", attached_to=None,
                           malignant=False, margin="smooth", solid_diameter_mm=6.0, shape_seed=3)
    spacing = np.array([1.0, 0.05, 0.05])
    n = 401
    hu = np.full((1, n, n), -850.0, np.float32)
    origin = np.array([-(n // 2) * 0.05, -(n // 2) * 0.05, 0.0])
    paint_nodule(hu, origin, spacing, np.eye(3), nodule)
    solid_area = float((hu[0] > -300).sum()) * 0.05 ** 2
    across = 2 * math.sqrt(solid_area / math.pi)
    assert painted_solid_diameter_mm(nodule, spacing) == pytest.approx(6.6)
    assert across == pytest.approx(6.6, abs=0.25)
    assert across > 6.3  # the core's own diameter would be 6.0
    assert painted_solid_diameter_mm(nodule, np.array([2.5, 0.8, 0.8])) == pytest.approx(6.8)  # ramp: the pixel
