"""The series' noise (inference/characterize/noise.py) and what it does to LAA-950 and Brock's emphysema input:
noise moves normal lung below -950 HU, so a noisy low-dose image's LAA-950 is no evidence of emphysema."""
from __future__ import annotations

import numpy as np
import pytest

from inference.characterize import characterize_exam
from inference.characterize.emphysema import LAA950_MAX_NOISE_HU
from inference.characterize.noise import global_noise_hu
from inference.clinical import FamilyHistory, Sex
from inference.phantom.build import make_phantom
from inference.pipeline import PatientInputs, assess
from inference.preprocess import lung_mask

PIXEL_MM = 0.7


def chest(noise_sd: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """30 slices of 160 x 160: soft tissue (40 HU) round two box lungs (-870 HU), white noise of `noise_sd` HU."""
    hu = np.full((30, 160, 160), 40.0, np.float32)
    lungs = np.zeros(hu.shape, bool)
    lungs[3:27, 30:130, 20:75] = True  # within the slices: the lungs are not cut (Lung-RADS 0)
    lungs[3:27, 30:130, 85:140] = True
    hu[lungs] = -870.0
    hu += np.random.default_rng(seed).normal(0.0, noise_sd, hu.shape).astype(np.float32)
    return hu, lungs


@pytest.mark.parametrize("sd", [10.0, 20.0, 45.0, 80.0])
def test_the_noise_is_the_soft_tissues_standard_deviation(sd: float) -> None:
    hu, _ = chest(sd)
    # the mode of the local SD over 7 x 7 pixels of white noise lies a little under the noise itself (the SD of 49
    # samples is skewed low); the lungs' edges are left out, or the edge ROIs would add SDs of hundreds of HU
    measured = global_noise_hu(hu, PIXEL_MM, range(0, 30, 3))
    assert measured is not None and 0.9 * sd <= measured <= 1.05 * sd, (sd, measured)


def test_no_soft_tissue_no_noise_figure_and_a_bad_pixel_size_is_refused() -> None:
    air = np.random.default_rng(1).normal(-1000.0, 20.0, (10, 64, 64)).astype(np.float32)
    assert global_noise_hu(air, PIXEL_MM, range(10)) is None
    with pytest.raises(ValueError, match="pixel spacing"):
        global_noise_hu(air, 0.0, range(10))


def test_a_noisy_images_laa950_is_measured_but_marked_unreliable() -> None:
    spacing = np.array([1.25, PIXEL_MM, PIXEL_MM])
    quiet, lungs = chest(15.0)
    exam = characterize_exam(quiet, spacing, lungs)
    # -870 HU lung, 15 HU of noise: below -950 HU is 5.3 SD away, no voxel in a million
    assert exam.laa950_reliable and exam.image_noise_hu == pytest.approx(15.0, rel=0.1) and exam.laa950_pct < 0.01
    noisy, _ = chest(60.0)
    exam = characterize_exam(noisy, spacing, lungs)
    # 60 HU: 80 / 60 = 1.33 SD, 9.1 % of normal lung below -950 HU (the normal distribution's tail)
    assert exam.image_noise_hu is not None and exam.image_noise_hu > LAA950_MAX_NOISE_HU
    assert not exam.laa950_reliable and exam.laa950_pct == pytest.approx(9.1, abs=0.4)


def _exam_of(hu: np.ndarray, spacing: np.ndarray, lungs: np.ndarray):
    return assess([], np.zeros(0), characterize_exam(hu, spacing, lungs), PatientInputs(64.0, Sex.FEMALE),
                  FamilyHistory.NO, 5.0, None, 1.25)[1]  # type: ignore[arg-type]  # no nodule: the volume is not read


def test_brocks_emphysema_input_is_missing_on_a_noisy_image_and_the_exam_says_why() -> None:
    spacing = np.array([1.25, PIXEL_MM, PIXEL_MM])
    hu, lungs = chest(15.0)
    low = np.random.default_rng(2).random(hu.shape) < 0.08
    hu[lungs & low] = -990.0  # 8 % emphysema on a quiet image: over the 5 % threshold, the input is yes
    exam = _exam_of(hu, spacing, lungs)
    assert exam.lung_rads == "1" and exam.risk_inputs.emphysema and exam.risk_inputs.missing == ()
    assert exam.image_noise_hu == pytest.approx(15.0, rel=0.1) and exam.to_json()["image_noise_hu"] is not None
    noisy, _ = chest(60.0)
    exam = _exam_of(noisy, spacing, lungs)  # 9 % below -950 HU from noise alone
    assert exam.laa950_pct is not None and exam.laa950_pct > 5.0
    assert not exam.risk_inputs.emphysema and exam.risk_inputs.missing == ("emphysema",)
    assert exam.reason is not None and "overstates emphysema" in exam.reason
    assert "Brock's emphysema input is unknown, counted as no" in exam.reason


def test_a_phantoms_noise_leaves_laa950_in_use_and_added_low_dose_noise_does_not() -> None:
    # the generator's noise (about 20 HU per voxel, correlated over a pixel) measures under the limit, so the
    # phantom series' exams keep their emphysema input; the same scan with 45 HU more (a low-dose scan's noise) not
    phantom = make_phantom(7000, small=True)
    hu = phantom.hu.astype(np.float32)
    spacing = np.asarray(phantom.spacing, float)
    lungs = lung_mask(hu, spacing)
    exam = characterize_exam(hu, spacing, lungs)
    assert exam.laa950_reliable and exam.image_noise_hu is not None and exam.image_noise_hu < LAA950_MAX_NOISE_HU
    hu += np.random.default_rng(3).normal(0.0, 45.0, hu.shape).astype(np.float32)
    noisy = characterize_exam(hu, spacing, lungs)
    assert not noisy.laa950_reliable and noisy.laa950_pct > exam.laa950_pct + 2.0
