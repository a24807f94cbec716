"""lidc-idri-0002's lesion characterised where its readers outlined it, against their ratings in the XML
(issue 11, "Real CT": what agrees, as the README says). The readers rate texture 1-5 (1-2 non-solid, 3
part-solid, 4-5 solid), calcification 1-6 (6: absent), spiculation and lobulation 1-5 (1: none)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from inference.characterize import characterize_nodule
from inference.characterize.noise import global_noise_hu
from inference.preprocess import lung_mask
from inference.volume import Volume, load_volume
from tests.conftest import LIDC_SERIES
from inference.phantom.added_noise import correlated_noise

READS = LIDC_SERIES.parent / "reader-annotations-071.xml"
NS = {"n": "http://www.nih.gov"}


@dataclass
class Read:
    """One reader's outline of the lesion (voxel indices z, y, x of its edge points) and ratings."""

    edge: np.ndarray
    ratings: dict[str, int]


def lesion_reads(volume: Volume) -> list[Read]:
    """The readers' outlines of lesions they rated (readings of < 3 mm nodules carry no ratings)."""
    index = {uid: z for z, uid in enumerate(volume.sop_instance_uids)}
    reads = []
    for nodule in ET.parse(READS).getroot().iterfind(".//n:unblindedReadNodule", NS):
        rated = nodule.find("n:characteristics", NS)
        if rated is None or rated.find("n:texture", NS) is None:
            continue
        edge = [(index[roi.findtext("n:imageSOP_UID", "", NS).strip()], int(point.findtext("n:yCoord", "", NS)),
                 int(point.findtext("n:xCoord", "", NS)))
                for roi in nodule.iterfind("n:roi", NS) if roi.findtext("n:inclusion", "", NS).strip() == "TRUE"
                for point in roi.iterfind("n:edgeMap", NS)]
        reads.append(Read(np.array(edge, float), {c.tag.split("}")[1]: int(c.text or 0) for c in rated}))
    return reads


def test_lesion_type_calcification_and_margin_agree_with_the_readers() -> None:
    volume = load_volume([dcmread(p) for p in sorted(Path(LIDC_SERIES).iterdir())])
    reads = lesion_reads(volume)
    assert len(reads) == 2, "two readers outlined and rated the lesion"
    edge = np.concatenate([r.edge for r in reads])
    extent_mm = float(((edge.max(axis=0) - edge.min(axis=0)) * volume.spacing)[1:].max())
    found = characterize_nodule(volume.hu, volume.spacing, edge.mean(axis=0), extent_mm * 0.75,
                                lung_mask(volume.hu, volume.spacing), direction=volume.direction)
    assert found.segmentation_ok, found.reason
    ratings = [r.ratings for r in reads]
    assert all(r["texture"] <= 2 for r in ratings) and found.type == "ground_glass"
    assert all(r["calcification"] == 6 for r in ratings) and not found.calcified
    assert all(r["spiculation"] == 1 for r in ratings) and found.margin != "spiculated"
    # lobulation 1 (none) from both; the lesion lies on the pleura and its faint rim is left out of the
    # segmentation, so most of each outline touches tissue: its lobulation is not judged, and its margin
    # is reported as not assessed (None), neither agreeing nor disagreeing with the readers
    assert all(r["lobulation"] == 1 for r in ratings) and found.margin is None
    assert found.features["outline_radius_px"] == 0
    assert found.location.lung == "left" and found.location.juxtapleural
    # the sheet spreads along the pleura beyond any ball its lung side predicts: segment.cut_to_lung_outline leaves it
    # whole (3040 mm3; where it cut it as a layer on a ball, 2323 mm3: segment.OUTLINE_WALL_REACH)
    assert found.volume_mm3 > 2900.0, found.volume_mm3


def test_on_a_noisy_copy_the_lesion_the_detector_undersizes_keeps_its_size() -> None:
    # lidc-idri-0002 (13.5 HU of noise) with correlated noise added to about 33 HU, as a low-dose scan carries: the
    # packaged detector (trained on 20 HU phantoms) calls the 22 mm ground-glass lesion 11.7 mm there (18.4 mm on the
    # original). Measured at that diameter, the ROI and the wall's opening it sets took the sheet's far ends (2241 mm3),
    # and the segmentation, over 3 x the detector's sphere and mostly on the pleura and vessels, was held to 1.3 x its
    # radius (1320 mm3). A ground-glass segmentation whose sphere is over 1.3 x the detector's diameter says the
    # detector undersized it: it is measured again at its own diameter and not held to the detector's extent
    volume = load_volume([dcmread(p) for p in sorted(Path(LIDC_SERIES).iterdir())])
    clean = characterize_nodule(volume.hu, volume.spacing, np.array([187.24, 362.52, 339.35]), 18.41,
                                direction=volume.direction)
    noisy = volume.hu + correlated_noise(volume.hu.shape, 30.0, 7, draw_dtype=np.float32)
    noise_hu = global_noise_hu(noisy, float(volume.spacing[1]), list(range(60, 200, 10)))
    assert noise_hu is not None and 30.0 <= noise_hu <= 36.0, noise_hu
    found = characterize_nodule(noisy, volume.spacing, np.array([189.08, 361.36, 338.92]), 11.71,
                                direction=volume.direction)
    assert clean.type == found.type == "ground_glass"
    assert not clean.held_to_detector and not found.held_to_detector
    assert abs(found.volume_mm3 - clean.volume_mm3) / clean.volume_mm3 <= 0.10, (found.volume_mm3, clean.volume_mm3)
    assert found.axes is not None and clean.axes is not None
    assert abs(found.axes.mean_mm - clean.axes.mean_mm) <= 1.0, (found.axes, clean.axes)
