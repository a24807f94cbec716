"""The phantom: deterministic, anatomically plausible, nodules where the truth says, valid DICOM."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pydicom
import pytest

from inference.phantom import PhantomNodule, insert_nodules, make_phantom, write_phantom_series
from inference.phantom.nodules import _sample_nodule_spec
from inference.volume import load_volume
from tests.conftest import require_tool


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    return write_phantom_series(tmp_path_factory.mktemp("phantom"), 11, small=True, n_nodules=4, fov_padding=True)


def test_same_seed_same_phantom_and_other_seed_differs():
    options = dict(matrix=128, n_slices=60, slice_spacing_mm=5.0, pixel_spacing_mm=2.8, n_nodules=2)
    a = make_phantom(5, **options)
    b = make_phantom(5, **options)
    c = make_phantom(6, **options)
    assert np.array_equal(a.hu, b.hu)
    assert a.nodules == b.nodules
    assert not np.array_equal(a.hu, c.hu)


def test_anatomy_has_lungs_bone_and_soft_tissue():
    p = make_phantom(3, small=True)
    assert p.hu.dtype == np.int16 and p.hu.shape[1:] == (256, 256)
    mid = p.hu[p.hu.shape[0] // 2]
    assert np.mean(mid < -700) > 0.1  # lungs (and air outside)
    assert np.count_nonzero(mid > 600) > 30  # ribs, spine
    body = mid[90:170, 128]  # down the midline: mediastinum and spine
    assert np.median(body) > -200
    assert mid[0, 0] < -900  # air in the corner


def test_nodules_sit_in_lung_at_their_truth_centres(small_case):
    p = small_case.phantom
    assert len(p.nodules) >= 3
    for n in p.nodules:
        assert 3.0 <= n.diameter_mm <= 30.0
        zyx = np.rint(p.world_to_voxel(n.center_mm)[0]).astype(int)
        # a solid component is about soft tissue; ground glass is far denser than lung
        expected = -750 if n.kind == "ground-glass" else -150
        assert p.hu[tuple(zyx)] > expected, n
        # a shell well outside the nodule is mostly aerated lung (pleural ones touch the chest wall)
        r = n.diameter_mm / 2 + 4 if n.margin != "spiculated" else n.diameter_mm + 6
        offsets = np.array([[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0], [0, 0, r], [0, 0, -r]])
        ring = np.rint(p.world_to_voxel(np.array(n.center_mm) + offsets)).astype(int)
        ring = np.clip(ring, 0, np.array(p.hu.shape) - 1)
        values = p.hu[tuple(ring.T)]
        assert np.count_nonzero(values < -600) >= (2 if n.attached_to else 3), (n, values)


def test_malignancy_follows_size_and_margin():
    rng = np.random.default_rng(0)
    specs = [_sample_nodule_spec(rng) for _ in range(3000)]
    big = [s["malignant"] for s in specs if s["diameter_mm"] >= 12]
    small = [s["malignant"] for s in specs if s["diameter_mm"] < 6]
    assert len(big) > 100 and len(small) > 100
    assert np.mean(big) > np.mean(small) + 0.3
    assert all(s["margin"] != "spiculated" for s in specs if not s["malignant"])
    spiculated = [s["malignant"] for s in specs if s["margin"] == "spiculated"]
    assert spiculated and all(spiculated)


def test_written_series_is_valid_dicom(small_case):
    dciodvfy = require_tool("dciodvfy")
    ds = pydicom.dcmread(small_case.files[0])
    assert ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.PatientID and ds.PatientBirthDate and ds.PatientSex in ("M", "F")
    for path in (small_case.files[0], small_case.files[len(small_case.files) // 2]):
        out = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


def test_truth_file_matches_phantom(small_case):
    truth = json.loads(small_case.truth_path.read_text())
    assert truth["series_instance_uid"] == small_case.series_instance_uid
    assert len(truth["nodules"]) == len(small_case.phantom.nodules)
    for t, n in zip(truth["nodules"], small_case.phantom.nodules):
        assert np.allclose(t["center_mm"], n.center_mm, atol=1e-3)
        assert t["kind"] == n.kind and t["malignant"] == n.malignant


def test_insert_nodules_into_a_volume():
    p = make_phantom(8, small=True, n_nodules=0)
    ds_like = load_volume_from_phantom(p)
    lung = (ds_like.hu < -700)
    lung[:, :, :20] = lung[:, :, -20:] = False
    lung[:, :20] = lung[:, -20:] = False
    rng = np.random.default_rng(0)
    before = ds_like.hu.copy()
    placed = insert_nodules(ds_like, lung, 3, rng)
    assert len(placed) == 3
    for n in placed:
        zyx = np.rint(ds_like.world_to_voxel(np.array(n.center_mm))).astype(int)
        assert ds_like.hu[tuple(zyx)] > before[tuple(zyx)] + 150
    explicit = PhantomNodule(center_mm=placed[0].center_mm, diameter_mm=6.0, kind="solid", attached_to=None, malignant=False)
    insert_nodules(ds_like, lung, [explicit], rng)
    with pytest.raises(ValueError, match="not inside the lung"):
        insert_nodules(ds_like, lung, [PhantomNodule((9999.0, 0.0, 0.0), 6.0, "solid", None, False)], rng)


def load_volume_from_phantom(p):
    from inference.volume import Volume

    return Volume(
        hu=p.hu.astype(np.float32), origin=p.origin, spacing=p.spacing, direction=np.eye(3),
        sop_instance_uids=["1"] * p.hu.shape[0], sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1", study_instance_uid="1",
    )


def test_phantom_and_anatomy_is_both_phantoms_from_one_drawing():
    # the characterisation evaluation's truth (the nodule-free twin and the drawn lungs) must be what the
    # two separate calls give, voxel for voxel: its figures were measured with them
    from inference.phantom import anatomy_and_lungs, phantom_and_anatomy

    phantom, anatomy, drawn = phantom_and_anatomy(8001, small=True, margin_mm=1.5)
    alone_anatomy, alone_drawn = anatomy_and_lungs(8001, small=True, margin_mm=1.5)
    assert np.array_equal(phantom.hu, make_phantom(8001, small=True).hu) and len(phantom.nodules) == 3
    assert np.array_equal(anatomy.hu, alone_anatomy.hu) and not anatomy.nodules
    assert np.array_equal(drawn, alone_drawn) and drawn.any()
    assert not np.array_equal(phantom.hu, anatomy.hu)  # the nodules are painted on one of them only


@pytest.mark.parametrize("margin_mm", [1.49692756, 2.5, 2.9, 4.2])  # the first two: ties with a voxel step
def test_deeper_than_a_margin_is_what_the_distance_transform_gives(margin_mm: float) -> None:
    # the drawn lungs' margin is an erosion by a ball; it must keep exactly the voxels the Euclidean distance
    # transform puts farther than the margin from the outside, on anisotropic voxels and at the array's edge
    from scipy import ndimage

    from inference.phantom.build import _deeper_than

    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((30, 40, 40)) > 0.3, iterations=2)
    mask[:, :, :5] = True  # a region running into the array's edge
    spacing = np.array([2.5, 1.49692756, 1.49692756])
    expected = ndimage.distance_transform_edt(mask, sampling=spacing) > margin_mm
    got = _deeper_than(mask, spacing, margin_mm)
    assert expected.any() and (mask & ~expected).any()
    assert np.array_equal(got, expected)
