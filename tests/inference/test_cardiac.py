"""Coronary artery calcium (inference/characterize/cardiac.py) on lidc-idri-0002 (no coronary calcium; bones, costal
cartilage and aorta in view): the clean heart scores 0; calcium painted in the epicardial fat of the atrioventricular
and interventricular grooves scores the Agatston figure computed here from the painted voxels; calcium painted in the
aorta's wall, the arch, a rib, a vertebra and a costal cartilage does not count; and so at a low-dose scan's noise."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from inference.characterize.cardiac import CoronaryCalcium, coronary_calcium, density_weight
from inference.clinical.significant import calcium_grade, whole_score
from inference.phantom.added_noise import correlated_noise
from inference.preprocess import preprocess
from inference.volume import Volume, load_volume
from tests.conftest import LIDC_SERIES, SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared test data missing at {SHARED_DATA}")

OWN_NOISE_HU = 13.5  # lidc-idri-0002's (inference/characterize/noise.py)

# Voxels (z, y, x) of lidc-idri-0002 in the epicardial fat of the heart's grooves (fat -95..-50 HU, 5 mm or more from
# the lung; checked on rendered slices): the left atrioventricular groove by the left atrial appendage (circumflex),
# the anterior interventricular groove (LAD), the right atrioventricular groove at two levels (RCA) and the crux (the
# posterior groove, by the coronary sinus; 8 mm from the oesophagus and the descending aorta in this thin patient).
LEFT_AV = (120, 207, 305)
ANTERIOR_IV = (100, 150, 338)
RIGHT_AV = (80, 131, 220)
RIGHT_AV_LOW = (70, 127, 228)
CRUX = (80, 232, 257)

# ...and out of the heart: the descending aorta's front wall where it lies on the left atrium and its lateral wall, the
# aortic arch's left wall, the front of a vertebral body (an osteophyte), a left rib, and a costal cartilage beside the
# sternum (within 15 mm of the heart's front).
AORTA_FRONT = (95, 261, 292)
AORTA_SIDE = (95, 276, 307)
ARCH = (180, 268, 315)
VERTEBRA = (95, 286, 262)
RIB = (100, 185, 437)
CARTILAGE = (115, 113, 291)


@pytest.fixture(scope="module")
def lidc_volume() -> Volume:
    return load_volume([pydicom.dcmread(p) for p in sorted(LIDC_SERIES.glob("*.dcm"))])


@pytest.fixture(scope="module")
def lidc(lidc_volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """hu, spacing, lung mask (the pipeline's own: preprocess's source-resolution mask) and direction, once."""
    volume = lidc_volume
    lungs = preprocess(volume).source_lung_mask()
    return volume.hu, np.asarray(volume.spacing, float), lungs, np.asarray(volume.direction, float)


def capsule(hu: np.ndarray, spacing: np.ndarray, centre: Sequence[int], half_mm: Sequence[float], radius_mm: float,
            value: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Paint a capsule (a tube segment with round ends) of `radius_mm` about `centre` (voxel), its axis from -half_mm
    to +half_mm (z, y, x mm), at `value` HU with partial volume (3^3 samples a voxel). Returns its box and the painted
    share of each voxel there."""
    c = np.asarray(centre, float)
    axis = np.asarray(half_mm, float)
    reach = (np.abs(axis) + radius_mm) / spacing + 2
    lo, hi = np.floor(c - reach).astype(int), np.ceil(c + reach).astype(int) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    steps = (np.arange(3) + 0.5) / 3 - 0.5
    share = np.zeros(tuple(int(b - a) for a, b in zip(lo, hi)), np.float32)
    span = 2 * axis  # the axis from its start, -half_mm
    length2 = max(float(span @ span), 1e-9)
    for dz in steps:
        for dy in steps:
            for dx in steps:
                # offsets (mm) from the axis's start
                z = ((np.arange(lo[0], hi[0]) + dz - c[0]) * spacing[0] + axis[0])[:, None, None]
                y = ((np.arange(lo[1], hi[1]) + dy - c[1]) * spacing[1] + axis[1])[None, :, None]
                x = ((np.arange(lo[2], hi[2]) + dx - c[2]) * spacing[2] + axis[2])[None, None, :]
                t = np.clip((z * span[0] + y * span[1] + x * span[2]) / length2, 0.0, 1.0)
                share += (z - t * span[0]) ** 2 + (y - t * span[1]) ** 2 + (x - t * span[2]) ** 2 <= radius_mm ** 2
    share /= 27
    hu[box] = hu[box] * (1 - share) + value * share
    return box, share


def expected_agatston(hu: np.ndarray, spacing: np.ndarray, box: tuple[slice, ...], share: np.ndarray) -> float:
    """Agatston's score of one painted lesion, counted here: on each slice, each 8-connected region of pixels >= 130
    HU where paint reached (and their ring) of >= 1 mm2 scores area x the weight of its peak; x slice spacing / 3 mm."""
    near = ndimage.binary_dilation(share > 0)
    pixel_mm2 = float(spacing[1] * spacing[2])
    score = 0.0
    for plane, reached in zip(hu[box], near):
        labels, n = ndimage.label(reached & (plane >= 130.0), structure=np.ones((3, 3), bool))
        for label in range(1, n + 1):
            region = labels == label
            area = float(region.sum()) * pixel_mm2
            peak = float(plane[region].max())
            weight = 4 if peak >= 400 else 3 if peak >= 300 else 2 if peak >= 200 else 1
            score += area * weight if area >= 1.0 else 0.0
    return score * float(spacing[0]) / 3.0


# (site, half axis mm, radius mm, HU): short tubes along the groove and blobs, 2-3 mm across, 350-900 HU
MILD = [(LEFT_AV, (0.0, 1.5, 2.5), 1.0, 450.0)]
MODERATE = [(LEFT_AV, (0.6, 1.5, 3.0), 1.2, 700.0), (ANTERIOR_IV, (0.0, 0.0, 0.0), 1.5, 450.0),
            (RIGHT_AV, (0.6, -2.0, 2.0), 1.0, 900.0), (CRUX, (0.0, 0.0, 0.0), 1.0, 350.0)]
SEVERE = [(LEFT_AV, (1.2, 2.0, 4.0), 1.5, 900.0), (ANTERIOR_IV, (1.5, 2.0, 0.0), 1.5, 800.0),
          (RIGHT_AV, (1.2, -3.0, 3.0), 1.3, 900.0), (RIGHT_AV_LOW, (0.6, 1.5, 2.0), 1.3, 700.0)]
# a plaque of 6 mm at the crux reaches within 4 mm of the oesophagus and aorta (cardiac.OTHER_CLEARANCE_MM) and is
# dropped with them: the small one in MODERATE counts


def painted(hu: np.ndarray, spacing: np.ndarray, lesions: list) -> tuple[np.ndarray, float]:
    """A copy of `hu` with `lesions` painted, and the Agatston score expected of them."""
    out = hu.copy()
    boxes = [capsule(out, spacing, site, half, radius, value) for site, half, radius, value in lesions]
    return out, sum(expected_agatston(out, spacing, box, share) for box, share in boxes)


def test_the_clean_heart_of_lidc_idri_0002_has_no_calcium(lidc: tuple) -> None:
    """No coronary calcium on the series (read on its images); its spine, ribs, sternum, costal cartilages and aorta
    are all over 130 HU somewhere, none of it counts."""
    hu, spacing, lungs, direction = lidc
    found = coronary_calcium(hu, spacing, lungs, direction, OWN_NOISE_HU)
    assert found == CoronaryCalcium(0.0, 0, 0.0, 130.0, None) and found.grade == "none"


@pytest.mark.parametrize("lesions, grade", [(MILD, "mild"), (MODERATE, "moderate"), (SEVERE, "severe")])
def test_painted_coronary_calcium_scores_its_agatston_figure(lidc: tuple, lesions: list, grade: str) -> None:
    """Calcium painted in the grooves: every lesion found, the score the figure counted from the painted voxels
    (within 2 %), its grade crossing from mild to moderate to severe as more and denser calcium is painted."""
    hu, spacing, lungs, direction = lidc
    volume, expected = painted(hu, spacing, lesions)
    found = coronary_calcium(volume, spacing, lungs, direction, OWN_NOISE_HU)
    assert found is not None and found.lesions == len(lesions), (found, expected)
    assert found.agatston == pytest.approx(expected, rel=0.02), (found, expected)
    assert found.grade == grade == calcium_grade(expected).value and found.threshold_hu == 130.0 and found.note is None
    assert found.volume_mm3 > 0.0


@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 2)], ids=["head-first-down", "prone", "feet-first"])
def test_a_series_stored_another_way_round_reads_the_same(lidc: tuple, axes: tuple[int, ...]) -> None:
    """Slices stored head to foot (the slice axis pointing to the feet), rows and columns reversed (a prone series'
    storage), or columns and slices (feet-first): the same lesions and score. The scoring reads the series as stored
    (inference.orientation), and its coarse grid starts at the stored first voxel."""
    hu, spacing, lungs, direction = lidc
    volume, expected = painted(hu, spacing, MODERATE)
    flipped = direction.copy()
    for axis in axes:
        flipped[:, 2 - axis] *= -1  # the direction's columns are the x, y and z index directions
    found = coronary_calcium(np.flip(volume, axes), spacing, np.flip(lungs, axes), flipped, OWN_NOISE_HU)
    assert found is not None and found.lesions == len(MODERATE) and found.agatston == pytest.approx(expected, rel=0.02)


def test_calcium_out_of_the_heart_does_not_count(lidc: tuple) -> None:
    """Calcium painted in the descending aorta's wall (where it lies on the left atrium, and its side), the arch's
    wall, a vertebral body's front, a rib and a costal cartilage by the sternum: none of it counts; with one coronary
    lesion painted too, the score is that lesion's alone."""
    hu, spacing, lungs, direction = lidc
    others = [(AORTA_FRONT, (0.0, 0.0, 3.0), 1.2, 800.0), (AORTA_SIDE, (0.0, 3.0, 0.0), 1.2, 800.0),
              (ARCH, (0.0, 3.0, 0.0), 1.5, 800.0), (VERTEBRA, (0.0, 0.0, 3.0), 1.5, 600.0),
              (RIB, (0.0, 0.0, 0.0), 2.0, 900.0), (CARTILAGE, (0.0, 0.0, 0.0), 1.5, 500.0)]
    volume, _ = painted(hu, spacing, others)
    found = coronary_calcium(volume, spacing, lungs, direction, OWN_NOISE_HU)
    assert found is not None and found.agatston == 0.0 and found.lesions == 0, found
    with_coronary, expected = painted(volume, spacing, MILD)
    found = coronary_calcium(with_coronary, spacing, lungs, direction, OWN_NOISE_HU)
    assert found is not None and found.lesions == 1 and found.agatston == pytest.approx(expected, rel=0.02), found


NOISE_SITES = MODERATE[:3]  # the crux lesion lies 8 mm from the aorta and oesophagus: at 70 HU it is dropped with them


@pytest.mark.slow
@pytest.mark.parametrize("noise_hu, tolerance", [(40.0, 0.15), (70.0, 0.30)])
def test_at_low_dose_noise_the_clean_heart_stays_clean_and_painted_calcium_is_found(
        lidc: tuple, noise_hu: float, tolerance: float) -> None:
    """Correlated noise added to bring the series to 40 and 70 HU (a low-dose scan's): no calcium in the clean heart
    (the threshold raised over 130 HU, and said so); the painted lesions of a moderate score all found, and the
    mild one alone, each score within `tolerance` of the clean figure (the raised threshold trims the lesions' faint
    edges; noise adds to their peaks). The noise is measured by the module itself (noise_hu None). Measured
    (seed 11): 134.4 of 136.9 at 40 HU, 113.4 at 70 HU; the mild 22.5 and 20.9 of 24.0."""
    hu, spacing, lungs, direction = lidc
    added = correlated_noise(hu.shape, float(np.sqrt(noise_hu ** 2 - OWN_NOISE_HU ** 2)), 11, draw_dtype=np.float32)
    clean = coronary_calcium(hu + added, spacing, lungs, direction)
    assert clean is not None and clean.agatston == 0.0 and clean.lesions == 0, clean
    assert clean.threshold_hu > 130.0 and clean.note is not None and "noise" in clean.note
    volume, expected = painted(hu, spacing, NOISE_SITES)
    volume += added
    found = coronary_calcium(volume, spacing, lungs, direction)
    assert found is not None and found.lesions == len(NOISE_SITES), (found, expected)
    assert abs(found.agatston - expected) <= tolerance * expected, (found, expected)
    assert found.grade == calcium_grade(expected).value == "moderate"
    volume, expected = painted(hu, spacing, MILD)  # a 2 mm plaque of 450 HU: mild
    volume += added
    found = coronary_calcium(volume, spacing, lungs, direction)
    assert found is not None and found.lesions == 1 and abs(found.agatston - expected) <= tolerance * expected, found


def test_no_heart_in_view_air_and_a_wrong_mask(lidc: tuple) -> None:
    """The top 60 slices (neck and lung apices, no heart): None; an all-air volume: None; a lung mask of another
    shape, or a volume that is not 3D: ValueError naming the shapes."""
    hu, spacing, lungs, direction = lidc
    assert coronary_calcium(hu[-60:], spacing, lungs[-60:], direction, OWN_NOISE_HU) is None
    air = np.full((40, 128, 128), -1000.0, np.float32)
    assert coronary_calcium(air, spacing, np.zeros(air.shape, bool)) is None
    with pytest.raises(ValueError, match=r"\(261, 512, 512\)"):
        coronary_calcium(hu, spacing, lungs[:-1], direction)
    with pytest.raises(ValueError, match="shape"):
        coronary_calcium(hu[0], spacing, lungs[0])


def test_agatston_density_weights() -> None:
    assert [density_weight(v) for v in (129.9, 130.0, 199.9, 200.0, 299.0, 300.0, 399.0, 400.0, 1500.0)] == \
        [0, 1, 1, 2, 2, 3, 3, 4, 4]
    # the grades: tests/inference/test_significant.py


def test_the_pipeline_states_the_calcium_and_suggests_the_s_modifier(lidc_volume: Volume, lidc: tuple) -> None:
    """What the pipeline makes of it (`coronary_calcium_summary`, `assess`): moderate calcium is the exam's coronary
    calcium, graded by its whole score, and suggests Lung-RADS S beside an unchanged category; the clean heart
    suggests nothing; a series with contrast is not measured, and says why."""
    from dataclasses import replace

    from inference.characterize import ExamCharacteristics
    from inference.clinical import FamilyHistory, Sex
    from inference.pipeline import PatientInputs, assess, coronary_calcium_summary

    hu, spacing, lungs, _ = lidc
    moderate, expected = painted(hu, spacing, MODERATE)
    calcium = coronary_calcium_summary(replace(lidc_volume, hu=moderate), lungs, OWN_NOISE_HU, None)
    assert (calcium.agatston, calcium.grade, calcium.lesions) == (whole_score(expected), "moderate", len(MODERATE))
    clean = coronary_calcium_summary(lidc_volume, lungs, OWN_NOISE_HU, None)
    assert (clean.agatston, clean.grade) == (0, "none")
    enhanced = coronary_calcium_summary(lidc_volume, lungs, OWN_NOISE_HU, "OMNIPAQUE 350")
    assert enhanced.agatston is None and enhanced.note == ("not measured: intravenous contrast (OMNIPAQUE 350) makes "
                                                           "blood read as calcium")
    exam = ExamCharacteristics(4952.0, 1.1, True, None, (0.0, 0.0))
    for given, label in ((calcium, "1S"), (clean, "1"), (enhanced, "1")):
        _, summary, _ = assess([], np.zeros(0), exam, PatientInputs(64.0, Sex.FEMALE), FamilyHistory.NO, 5.0,
                               lidc_volume, 1.25, calcium=given)
        assert (summary.lung_rads, summary.lung_rads_label) == ("1", label)
        assert summary.to_json()["coronary_calcium"] == given.to_json()

    def kinds(chars: ExamCharacteristics) -> list[str]:
        _, summary, _ = assess([], np.zeros(0), chars, PatientInputs(64.0, Sex.FEMALE), FamilyHistory.NO, 5.0,
                               lidc_volume, 1.25, calcium=calcium)
        return [f.kind for f in summary.significant_findings]

    assert kinds(exam) == ["coronary_calcium"]
    emphysema = ExamCharacteristics(4952.0, 7.5, True, None, (0.0, 0.0), 14.0)
    assert kinds(emphysema) == ["coronary_calcium", "emphysema"]  # at Brock's 5 % LAA-950: S for emphysema too
    noisy = ExamCharacteristics(4952.0, 7.5, True, None, (0.0, 0.0), 40.0, laa950_reliable=False)
    assert kinds(noisy) == ["coronary_calcium"]  # the noise, not emphysema, put the lung below -950 HU


def test_a_scoring_that_fails_costs_the_statement_not_the_exam(monkeypatch: pytest.MonkeyPatch) -> None:
    """An anatomy the heart finder did not foresee: the exam goes on, its calcium says it was not measured and why."""
    import inference.pipeline as pipeline
    from inference.volume import CT_IMAGE_STORAGE

    def broken(*_args: object) -> None:
        raise IndexError("index 0 is out of bounds")

    monkeypatch.setattr(pipeline, "coronary_calcium", broken)
    volume = Volume(np.zeros((4, 8, 8), np.float32), np.zeros(3), np.ones(3), np.eye(3), ["1.2.1"] * 4,
                    CT_IMAGE_STORAGE, "1.2", "1.3")
    summary = pipeline.coronary_calcium_summary(volume, np.zeros((4, 8, 8), bool), None, None)
    assert summary.agatston is None and summary.note == "not measured: the scoring failed (IndexError)"


def test_on_slices_twice_as_thick_the_grades_hold(lidc: tuple) -> None:
    """A 2.5 mm reconstruction (pairs of slices averaged, the lung mask with them): the clean heart stays 0 and painted
    calcium keeps its grade; partial volume moves the score (measured: 132.4 of 139.8, 458.1 of 391.1; the mild plaque
    17.8 of 24.0, still mild), as Agatston scores move between slice thicknesses."""
    hu, spacing, lungs, direction = lidc
    thick_spacing = spacing * np.array([2.0, 1.0, 1.0])

    def thick(values: np.ndarray) -> np.ndarray:
        n = values.shape[0] // 2 * 2
        return values[:n].reshape(n // 2, 2, *values.shape[1:]).mean(axis=1, dtype=np.float32)

    thick_lungs = thick(lungs.astype(np.float32)) > 0.5
    clean = coronary_calcium(thick(hu), thick_spacing, thick_lungs, direction, OWN_NOISE_HU / np.sqrt(2))
    assert clean is not None and clean.agatston == 0.0
    for lesions, grade, low, high in ((MODERATE, "moderate", 0.85, 1.15), (SEVERE, "severe", 1.0, 1.3)):
        volume, expected = painted(hu, spacing, lesions)
        found = coronary_calcium(thick(volume), thick_spacing, thick_lungs, direction, OWN_NOISE_HU / np.sqrt(2))
        assert found is not None and found.grade == grade and low * expected <= found.agatston <= high * expected
