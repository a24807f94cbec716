"""Characterisation on held-out phantoms (seeds never used for tuning: those were 1..40, 500..519 and
7000..7049).

Truth: the phantom's own nodules (kind) and the painter's partial-volume fraction (volume; see
inference.training.characterize_eval.painted_volumes). Small phantoms keep this to a few seconds per seed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference.characterize.attenuation import SOLID_MAX_RIM
from inference.phantom import paint_nodule, phantom_and_anatomy
from inference.training.characterize_eval import (
    BONE_HU, DRAWN_LUNG_MARGIN_MM, TYPES, Evaluation, evaluate, evaluate_seed, format_report, painted_volumes,
    parse_args, truth_region,
)
from tests.inference.phantom_nodules import phantom_nodule_as_detected

SEEDS = range(700, 706)


def test_type_and_volume_on_held_out_phantoms() -> None:
    ev = evaluate(SEEDS, min_diameter_mm=6.0)
    counted = ev.counted
    assert len(counted) >= 15, f"too few nodules of 6 mm or more to judge: {len(counted)}"
    confusion = ev.confusion("type")
    assert ev.accuracy("type") >= 0.9, f"type confusion (rows truth, columns predicted, {TYPES}):\n{confusion}"
    # what `dicomnode model evaluate --json` prints as "characterization"
    doc = json.loads(json.dumps(ev.to_json()))
    assert doc["nodules_counted"] == len(counted) and doc["min_diameter_mm"] == 6.0
    assert doc["type"] == {"labels": list(TYPES), "confusion": confusion.tolist(), "accuracy": round(ev.accuracy("type"), 4)}
    assert doc["volume_error"]["share_within_15pct"] == round(float(np.mean(np.abs(ev.volume_errors()) <= 0.15)), 4)
    # volume. The target (every nodule >= 6 mm within 15 %) is NOT met here (2.5-3 mm slices):
    # a 6.5 mm part-solid nodule typed solid loses its ground-glass rim (-52 %, seed 701), and the 6.4 mm
    # calcified one on the pleura (seed 700) takes part of the wall with it (+16 %). History: before the
    # shape prior and the rim, free 13/15 and attached 2/5; a vessel stub on seed 704 (+19 %) and the
    # pleural base of seed 700 (-34 %) were fixed on the way; now free 14/15, attached 4/5.
    free = [r for r in counted if r.attached_to is None]
    attached = [r for r in counted if r.attached_to is not None]
    assert np.median([abs(r.volume_error) for r in free]) <= 0.1
    misses = [(r.seed, round(r.diameter_mm, 1), r.attached_to, f"{r.volume_error:+.0%}") for r in counted
              if abs(r.volume_error) > 0.15]
    assert np.mean([abs(r.volume_error) <= 0.15 for r in free]) >= 0.9, misses
    assert np.mean([abs(r.volume_error) <= 0.15 for r in attached]) >= 0.8, misses
    # a nodule whose painting crosses the lungs' outline abuts the wall: it must be called juxtapleural
    # (the Lung-RADS juxtapleural rule depends on it); the generator's "pleura" label is not that truth
    at_pleura = [r for r in counted if r.at_pleura]
    assert at_pleura and all(r.juxtapleural for r in at_pleura), [(r.seed, r.diameter_mm) for r in at_pleura]
    # the phantoms paint no fissures: a perifissural call would be a false positive
    assert not [r for r in counted if r.perifissural]
    # every segmentation of a nodule inside the scan succeeds
    assert all(r.segmentation_ok for r in counted)


def test_small_part_solid_nodules_keep_their_ground_glass_rim() -> None:
    # free part-solid nodules of about 9 mm whose core share and volume ratio look solid at
    # 1.5 x 1.5 x 3 mm (phantom seeds 7026 and 7034, tuning seeds): typed solid, they lost their
    # ground-glass rim to the solid boundary (-54 %, -47 % volume); the rim thickness keeps them
    cases = {7026: 3, 7034: 1}
    for seed, index in cases.items():
        r = evaluate_seed(seed)[index]
        assert (r.truth_type, r.attached_to) == ("part_solid", None)
        assert r.predicted_type == "part_solid", (seed, index, r.predicted_type)
        assert abs(r.volume_error) <= 0.15, (seed, index, f"{r.volume_error:+.0%}")


def test_vessel_stub_beyond_the_nodule_is_cut() -> None:
    # a 6.7 mm solid nodule on a vessel nearly as thick (tuning seed 7025) at 1.5 x 1.5 x 3 mm: no neck,
    # so the watershed left a layer of the vessel on it (+25 % volume); the trim beyond its base
    # radius (segment.trim_vessels) cuts it, and the nodule keeps the vessel's course inside it
    r = evaluate_seed(7025)[0]
    assert (r.truth_type, r.attached_to) == ("solid", "vessel")
    assert r.predicted_type == "solid" and r.segmentation_ok
    assert abs(r.volume_error) <= 0.15, f"{r.volume_error:+.0%}"


def test_vessel_along_the_nodule_is_cut_at_the_outline_its_lung_sides_predict() -> None:
    # solid nodules on small phantoms (seed 12033: 16.5 mm at 1.5 x 1.5 x 2.5 mm, on a vessel that runs along its side
    # and on under it; seed 12015: 11.2 mm at 1.36 x 1.36 x 3 mm, lobulated, on a vessel bundle) kept a millimetre-thick layer of the vessel within
    # trim_vessels' reach (+15 %, +12 %); cut_to_lung_outline interpolates the outline over the vessel from the
    # sides that face lung (+3 %, +5 %). 12015:1 at its painted diameter: at the 9.6 mm the evaluation draws for it,
    # the segmentation held to 1.3 x that radius (characterize._ran_into_neighbours) cuts its lobes since the
    # twenty-eighth session (-34 %, the one nodule that rule lost; docs/characterization.md)
    r = evaluate_seed(12033)[2]
    assert (r.truth_type, r.attached_to, r.predicted_type) == ("solid", "vessel", "solid")
    assert abs(r.volume_error) <= 0.1, f"{r.volume_error:+.1%}"
    nodule, c, truth = phantom_nodule_as_detected(12015, 1, small=True)
    assert (nodule.kind, nodule.attached_to, c.type) == ("solid", "vessel", "solid")
    assert not c.held_to_detector
    assert abs(c.volume_mm3 - truth) / truth <= 0.1, (c.volume_mm3, truth)


def test_a_nodules_part_painted_over_a_rib_is_no_part_of_its_truth() -> None:
    # full-size seed 19003's first nodule (7.7 mm, solid) lies on the pleura where the generator drew a rib over
    # its lung label: the painter keeps the brighter of nodule and background, so that part never shows, and
    # the truth left it in (234 mm3 where the image shows about 209; the segmentation's 186 mm3 read -20 %)
    phantom, anatomy, drawn = phantom_and_anatomy(19003, small=False, margin_mm=DRAWN_LUNG_MARGIN_MM)
    nodule = phantom.nodules[0]
    assert nodule.diameter_mm > 7.5
    inside = truth_region(anatomy, drawn)
    everywhere = np.ones_like(inside)
    with_bone, _ = painted_volumes(phantom, inside | (drawn & (anatomy.hu > BONE_HU)), nodule)
    truth, painted = painted_volumes(phantom, inside, nodule)
    assert with_bone - truth > 0.08 * with_bone, (with_bone, truth)
    # painted onto the nodule-free image, the nodule leaves the bone as it was (its noise aside, the phantom's
    # image there is the same)
    a = np.full(phantom.hu.shape, -2000.0, np.float32)
    paint_nodule(a, phantom.origin, phantom.spacing, phantom.direction, nodule)
    over_bone = (a > -2000.0) & drawn & (anatomy.hu > BONE_HU)
    assert over_bone.sum() > 20
    on_anatomy = anatomy.hu.astype(np.float32)
    paint_nodule(on_anatomy, phantom.origin, phantom.spacing, phantom.direction, nodule)
    assert np.array_equal(on_anatomy[over_bone], anatomy.hu[over_bone].astype(np.float32))
    assert not np.array_equal(on_anatomy[a > -1000.0], anatomy.hu[a > -1000.0].astype(np.float32))
    assert painted_volumes(phantom, everywhere, nodule)[1] == painted


def test_a_nodule_painted_over_tissue_as_dense_as_its_own_is_listed_hidden_not_counted() -> None:
    # small seed 13001's first nodule (6.5 mm ground glass) is painted over a hilar vessel inside the drawn lungs: the
    # painter keeps the brighter of nodule and background, so none of it shows, and characterised at its painted
    # centre the segmentation finds the vessel (solid, +123 %). Its four neighbours >= 6 mm show 88 % or more
    results = evaluate_seed(13001, min_diameter_mm=6.0, small=True)
    hidden = [r for r in results if r.hidden]
    assert [(r.truth_type, round(r.diameter_mm, 1)) for r in hidden] == [("ground_glass", 6.5)]
    assert hidden[0].visible_share < 0.01
    assert all(r.visible_share > 0.85 for r in results if not r.hidden)
    ev = Evaluation(results=results)
    assert hidden[0] not in ev.counted and ev.hidden == hidden and len(ev.counted) == len(results) - 1
    assert ev.to_json()["hidden_by_anatomy"] == 1
    assert "hidden by the anatomy (painted over tissue as dense as its own, 0% shows; not counted): seed 13001 6.5 mm" \
        in format_report(ev, details=False)


def test_a_rib_along_a_nodule_is_no_part_of_its_volume() -> None:
    # full-size seed 14022's third nodule (18.1 mm, part-solid) lies along a rib that the generator drew inside the
    # lung, thinner than the wall's opening, with no neck between them: the segmentation took 728 mm3 of the rib
    # (+20 %); segment.drop_bone leaves it out
    nodule, c, truth = phantom_nodule_as_detected(14022, 2)
    assert (nodule.kind, round(nodule.diameter_mm, 1)) == ("part-solid", 18.1)
    assert c.segmentation_ok and c.type == "part_solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


def test_a_nodule_in_a_corner_of_the_lung_keeps_its_base_in_the_corner() -> None:
    # full-size seed 15017's first nodule (6.0 mm, solid) fills a corner of the lung: the ring of wall round it
    # is flat within its spread, and the one plane through it cut across the corner (-20 %; -9 % then, -11.5 % since
    # cut_to_lung_outline cuts nodules on the wall, 2026-12-05); the wall is also taken from each candidate's
    # nearest ring points where those lie on a plane
    nodule, c, truth = phantom_nodule_as_detected(15017, 0)
    assert (nodule.kind, round(nodule.diameter_mm, 1)) == ("solid", 6.0)
    assert c.segmentation_ok and c.type == "solid" and c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= 0.12, (c.volume_mm3, truth)


@pytest.mark.parametrize("seed, index, diameter_mm, tolerance", [
    (13009, 0, 9.4, 0.1), (9009, 0, 6.5, 0.11), (7019, 2, 6.3, 0.1)])
def test_a_solid_nodule_on_a_curved_wall_keeps_the_base_under_the_walls_quadric(
        seed: int, index: int, diameter_mm: float, tolerance: float) -> None:
    # small phantoms (3 and 2.5 mm slices): solid nodules on the pleura where the chest wall curves round them (a cup
    # under 13009:0, a strip of lung between two walls at 7019:2). The ring of wall round each lies on no plane, nor
    # do the ring points nearest to much of the base; those candidates were left to the wall (-53, -32, -21 %). The
    # wall under them is now the quadric surface through the whole ring. 7019:2 reads -8 % (-4 % before 2026-12-05's
    # outline cut on nodules sitting on the wall: it takes voxels of the rib under it, above 850 HU, off the mask).
    # 9009:0 -0 -> -10 % and 13009:0 -4 -> -8 % since 2026-12-05 (later): too small to hold ten voxels of their own
    # level, they kept the half-maximum count; their edge now counts by its fractions against 40 HU, and by the wall
    # the voxels outside the mask count as the wall's (measure._theirs), as for any solid nodule
    nodule, c, truth = phantom_nodule_as_detected(seed, index, small=True)
    assert (nodule.kind, round(nodule.diameter_mm, 1)) == ("solid", diameter_mm)
    assert c.segmentation_ok and c.type == "solid" and c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= tolerance, (c.volume_mm3, truth)


@pytest.mark.parametrize("seed, index, small, diameter_mm", [(21018, 0, False, 19.0), (12008, 0, True, 8.0)])
def test_a_nodule_sitting_on_the_wall_is_cut_at_the_outline_its_lung_sides_predict(
        seed: int, index: int, small: bool, diameter_mm: float) -> None:
    # solid nodules touching the wall over more than a point (segment.vessels._sits_on_wall): 21018:0 on the pleura kept
    # tissue beyond its own outline on its wall side, 12008:0 (small phantom, 3 mm slices) a vessel running between it
    # and the wall. cut_to_lung_outline left such nodules alone (+23, +17 %); it now cuts them as any other nodule,
    # beyond the outline their lung sides predict and outside the sphere through that edge
    nodule, c, truth = phantom_nodule_as_detected(seed, index, small=small)
    assert (nodule.kind, round(nodule.diameter_mm, 1)) == ("solid", diameter_mm)
    assert c.segmentation_ok and c.type == "solid" and c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= 0.12, (c.volume_mm3, truth)


def test_a_ground_glass_nodule_on_the_pleura_is_not_given_the_walls_blurred_edge() -> None:
    # full-size seed 19012's first nodule (8.6 mm, ground glass, 2.5 mm slices) sits on the pleura. The wall's
    # surface voxels (its candidates next to lung, -750 HU) lie a pixel lung-ward of the pleura (the half maximum
    # of its blurred edge), and a ground-glass nodule counts its voxels whole: with the cap restoration's plane
    # at 0.25 px above those voxels, as for a solid nodule, the base took that skin (+9 %; -3 % at a pixel)
    nodule, c, truth = phantom_nodule_as_detected(19012, 0)
    assert (nodule.kind, round(nodule.diameter_mm, 1)) == ("ground-glass", 8.6)
    assert c.segmentation_ok and c.type == "ground_glass" and c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= 0.06, (c.volume_mm3, truth)


def test_a_spiculated_solid_nodules_spicules_are_no_ground_glass_rim() -> None:
    # full-size seed 17005's first nodule (6.4 mm, solid, spiculated, 2 mm slices): its spicules are partial volume
    # all through, and counted as a ground-glass layer round its tissue they made a rim of 0.945 mm (part-solid
    # from 0.93 mm), measured at the ground-glass threshold: +22 %. The rim is counted without strands thinner
    # than attenuation.RIM_STRAND_MM (since 2026-12-04, twenty-sixth session, SPICULATED_RIM_STRAND_MM in a nodule
    # with spicules, as this one)
    nodule, c, truth = phantom_nodule_as_detected(17005, 0)
    assert (nodule.kind, nodule.margin, round(nodule.diameter_mm, 1)) == ("solid", "spiculated", 6.4)
    assert c.segmentation_ok and c.type == "solid" and c.margin == "spiculated"
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


def test_a_spiculated_solid_nodules_thick_spicules_are_no_ground_glass_rim() -> None:
    # full-size seed 21016's second nodule (6.4 mm, solid, spiculated, 0.625 mm slices; read once as held-out data
    # before the change): its spicules are up to 2 mm thick at their root, a ball of attenuation.RIM_STRAND_MM fits
    # them, and their partial volume made a rim of 1.19 mm: part-solid, measured at the ground-glass threshold,
    # +32 %. In a nodule with spicules the rim is counted without strands thinner than
    # attenuation.SPICULATED_RIM_STRAND_MM
    nodule, c, truth = phantom_nodule_as_detected(21016, 1)
    assert (nodule.kind, nodule.margin, round(nodule.diameter_mm, 1)) == ("solid", "spiculated", 6.4)
    assert c.segmentation_ok and c.type == "solid" and c.margin == "spiculated"
    assert c.features["ground_glass_rim"] <= SOLID_MAX_RIM
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


def test_a_calcified_nodule_resting_on_a_rib_keeps_its_calcification() -> None:
    # full-size seed 19003's first nodule (7.7 mm, solid, calcified at its centre, 2 mm slices) rests on a rib that the
    # generator drew inside the lung: above 300 HU (smoothed) its calcification and the rib are one structure that
    # continues outside the nodule, and segment.drop_bone took the calcification for bone (41 of the 51 voxels it
    # dropped lay over lung in the nodule-free phantom): 163 mm3, -22 %. A dense part central in the nodule stays.
    # -4 % until 2026-12-05, -10 % since cut_to_lung_outline reaches nodules sitting on the wall: it takes voxels of
    # the rib off the nodule's top slice (8 of the 10 it cuts lie outside the painted nodule; the rest of the error is
    # the part next to the rib the segmentation never had). The rim of its base on the wall lies beyond the outline
    # its lung sides predict (its centre is in the wall) and the sphere through its lung-side edge keeps it: -18 %
    # without that sphere
    nodule, c, truth = phantom_nodule_as_detected(19003, 0)
    assert (nodule.kind, nodule.calcified, round(nodule.diameter_mm, 1)) == ("solid", True, 7.7)
    assert c.segmentation_ok and c.type == "solid" and c.calcified and c.calcification_pattern == "central"
    assert c.location.juxtapleural
    assert abs(c.volume_mm3 - truth) / truth <= 0.12, (c.volume_mm3, truth)


def test_a_part_solid_nodule_with_a_small_core_is_part_solid() -> None:
    # full-size seed 14005's third nodule (7.5 mm, part-solid with a 2.45 mm solid core, on the pleura, 0.625 mm
    # slices): its core share above -300 HU is 0.022, under the 0.03 that attenuation.GGO_SHARE was, and it read
    # ground glass (Lung-RADS 2 where part-solid is 3). Every ground-glass nodule >= 6 mm of the 590 full-size
    # phantom nodules has 0.008 or less, of the small sets 7000..7049 and 12000..12039 0
    nodule, c, truth = phantom_nodule_as_detected(14005, 2)
    assert (nodule.kind, round(nodule.diameter_mm, 1), round(nodule.solid_diameter_mm, 1)) == ("part-solid", 7.5, 2.5)
    assert c.segmentation_ok and c.type == "part_solid"
    assert c.solid_axes is not None and c.solid_axes.mean_mm < 6.0
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


def test_a_small_solid_nodule_in_a_haze_of_vessels_is_solid_where_the_detector_puts_it() -> None:
    # full-size seed 15032's third nodule (6.6 mm, solid, on a vessel, 0.625 mm slices), where the packaged detector
    # puts it (characterize_eval --centres detector): 1.23, -0.43, 0.17 voxels off, 8.33 mm. The first mask takes
    # the partial volume of the vessels round it, and its core share above -300 HU is 0.47, under the 0.5 that
    # attenuation.SOLID_SHARE was: typed part-solid and bounded at the ground-glass level, +159 %. Its ground-glass
    # rim (0.91 mm) is a solid nodule's, and at 0.45 it is solid, +16 %
    nodule, c, truth = phantom_nodule_as_detected(15032, 2, 8.33, offset_voxels=(1.23, -0.43, 0.17))
    assert (nodule.kind, nodule.attached_to, round(nodule.diameter_mm, 1)) == ("solid", "vessel", 6.6)
    assert c.segmentation_ok and c.type == "solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.20, (c.volume_mm3, truth)


def test_a_nodule_the_detector_called_half_its_size_is_measured_at_its_own() -> None:
    # full-size seed 17015's fifth nodule (10.1 mm, part-solid, free, 1.25 mm slices), where the packaged detector
    # puts it (characterize_eval --centres detector): its centre 1.95, 1.15, 3.25 voxels (z, y, x) off, its
    # diameter 5.25 mm. At that diameter the wall's opening and the radii are half the nodule's: its solid core was
    # lost and it read ground glass, -99 % (-69 % at a centre a little elsewhere). The nodule's inscribed diameter at
    # the centre (segment.inscribed_diameter) is over DETECTOR_UNDERSIZE_FACTOR x the detector's: it is measured at it
    nodule, c, truth = phantom_nodule_as_detected(17015, 4, 5.25, offset_voxels=(1.95, 1.15, 3.25))
    assert (nodule.kind, nodule.attached_to, round(nodule.diameter_mm, 1)) == ("part-solid", None, 10.1)
    assert c.segmentation_ok and c.type == "part_solid"
    assert abs(c.volume_mm3 - truth) / truth <= 0.08, (c.volume_mm3, truth)


@pytest.mark.parametrize(("argv", "centres"), [
    ([], "truth"), (["--centres", "detector"], "detector"), (["--characterize-at", "detector"], "detector"),
])
def test_the_evaluation_takes_the_choice_of_centres_by_either_name(argv: list[str], centres: str) -> None:
    # `dicomnode model evaluate --characterize-at` and `characterize_eval --centres` name the same choice
    assert parse_args(argv).centres == centres
