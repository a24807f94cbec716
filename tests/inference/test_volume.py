"""load_volume: geometry from any slice order and patient position, pixel values, and the input checks."""
from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from inference.findings import NotAnalysable
from inference.phantom import write_phantom_series
from inference.volume import ENHANCED_CT_IMAGE_STORAGE, VolumeLimits, load_volume
from tests.conftest import LIDC_SERIES

SMALL = dict(matrix=160, n_slices=48, pixel_spacing_mm=2.2, slice_spacing_mm=2.5, n_nodules=2)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume")
    return {
        position: write_phantom_series(root / position, 21, patient_position=position, origin_offset_mm=offset, **SMALL)
        for position, offset in (("HFS", (12.0, -7.0, -250.0)), ("FFS", (-30.0, 15.0, 80.0)))
    }


def read(case, shuffle_seed: int | None = None) -> list[Dataset]:
    datasets = [pydicom.dcmread(p) for p in case.files]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(datasets)
    return datasets


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_world_coordinates_of_nodules_survive_any_order(cases, position):
    case = cases[position]
    phantom = case.phantom
    volumes = [load_volume(read(case)), load_volume(read(case, shuffle_seed=3))]
    for v in volumes:
        assert v.hu.shape == phantom.hu.shape
        assert np.allclose(v.spacing, phantom.spacing, atol=1e-4)
        for nodule in phantom.nodules:
            zyx = v.world_to_voxel(np.array(nodule.center_mm))
            assert np.allclose(v.voxel_to_world(zyx), nodule.center_mm, atol=1e-6)
            # the loaded voxel at the truth centre is the phantom's voxel there
            loaded = v.hu[tuple(np.rint(zyx).astype(int))]
            truth = phantom.hu[tuple(np.rint(phantom.world_to_voxel(nodule.center_mm)[0]).astype(int))]
            assert loaded == truth
            assert loaded > -750  # denser than aerated lung
    assert np.array_equal(volumes[0].hu, volumes[1].hu)
    assert volumes[0].sop_instance_uids == volumes[1].sop_instance_uids


def test_head_first_and_feet_first_index_orders(cases):
    hfs, ffs = load_volume(read(cases["HFS"])), load_volume(read(cases["FFS"]))
    # HFS slices run feet -> head along +z; FFS images have -x rows, so the normal points to the feet
    assert hfs.direction[2, 2] == pytest.approx(1.0) and ffs.direction[2, 2] == pytest.approx(-1.0)
    assert ffs.direction[0, 0] == pytest.approx(-1.0)
    z_hfs = hfs.voxel_to_world(np.array([[0, 0, 0], [hfs.shape[0] - 1, 0, 0]]))[:, 2]
    assert z_hfs[1] > z_hfs[0]
    # FFS: the same anatomy flipped on two axes
    assert np.array_equal(ffs.hu, cases["FFS"].phantom.hu[::-1, :, ::-1].astype(np.float32))
    first = pydicom.dcmread(cases["HFS"].files[0])
    assert hfs.sop_instance_uids[-1] == first.SOPInstanceUID  # instance 1 is the top slice


def test_rescale_and_padding_on_signed_data(cases):
    datasets = read(cases["HFS"])
    for ds in datasets:
        pixels = ds.pixel_array.astype(np.int32)
        stored = (pixels - 1000) // 2  # hu = pixels - 1024 = 2 * stored - 24 (less 1 where odd)
        stored[:4, :4] = -2000
        ds.PixelData = stored.astype("<i2").tobytes()
        ds.RescaleSlope = "2"
        ds.RescaleIntercept = "-24"
        ds.add_new(0x00280120, "US", 63536)  # written unsigned, meaning -2000 on int16 data
    v = load_volume(datasets)
    reference = cases["HFS"].phantom.hu  # HFS: index order equals the phantom's
    diff = np.abs(v.hu[:, 4:, 4:] - reference[:, 4:, 4:])
    assert diff.max() <= 1.0  # integer halving loses at most 1 HU
    assert np.all(v.hu[:, :4, :4] == -1024.0)


def mutate(datasets, fn):
    out = [copy.deepcopy(ds) for ds in datasets]
    for i, ds in enumerate(out):
        fn(i, ds)
    return out


@pytest.fixture(scope="module")
def hfs_datasets(cases):
    return read(cases["HFS"])


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda i, ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer"),
        (lambda i, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), "coronal"),
        (lambda i, ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "sagittal"),
        (lambda i, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.9659258, 0.2588190]), "tilted 15.0 degrees"),
        (lambda i, ds: setattr(ds, "Modality", "MR"), "not CT"),
        (lambda i, ds: setattr(ds, "SliceThickness", "5"), "5 mm thick"),
        (lambda i, ds: i == 7 and setattr(ds, "SeriesInstanceUID", generate_uid()), "2 different series"),
        (lambda i, ds: i == 7 and setattr(ds, "ImagePositionPatient", list(ds.ImagePositionPatient[:2]) + [ds.ImagePositionPatient[2] + 2.5]), "occur twice"),
        (lambda i, ds: i == 7 and ds.ImagePositionPatient.__setitem__(2, ds.ImagePositionPatient[2] + 1.0), "uneven"),
    ],
)
def test_unsuitable_series_are_refused_with_a_reason(hfs_datasets, change, reason):
    with pytest.raises(NotAnalysable, match=reason):
        load_volume(mutate(hfs_datasets, change))


def test_gantry_tilt_by_sheared_positions_is_refused(hfs_datasets):
    def shear(i, ds):
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], float(ds.ImagePositionPatient[1]) + 0.35 * z, z]

    with pytest.raises(NotAnalysable, match="gantry tilt"):
        load_volume(mutate(hfs_datasets, shear))


def test_missing_slice_and_few_slices(hfs_datasets):
    with pytest.raises(NotAnalysable, match="1 slice\\(s\\) missing"):
        load_volume(hfs_datasets[:20] + hfs_datasets[21:])
    with pytest.raises(NotAnalysable, match="at least 16"):
        load_volume(hfs_datasets[:10])
    with pytest.raises(NotAnalysable, match="single image"):
        load_volume(hfs_datasets[:1])
    assert load_volume(hfs_datasets[:10], VolumeLimits(min_slices=8)).shape[0] == 10


def test_missing_pixel_data_and_undecodable_pixels(hfs_datasets):
    no_pixels = mutate(hfs_datasets, lambda i, ds: i == 3 and delattr(ds, "PixelData"))
    with pytest.raises(NotAnalysable, match="no pixel data"):
        load_volume(no_pixels)
    broken = mutate(hfs_datasets, lambda i, ds: i == 3 and setattr(ds, "PixelData", b"\0" * 10))
    with pytest.raises(NotAnalysable, match="transfer syntax Explicit VR Little Endian"):
        load_volume(broken)


def enhanced_from(datasets: list[Dataset]) -> Dataset:
    """One Enhanced CT instance holding the classic slices as frames (in their file order)."""
    first = datasets[0]
    ds = Dataset()
    ds.file_meta = copy.deepcopy(first.file_meta)
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(datasets)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([orientation])
    transform = Dataset()
    transform.RescaleSlope = first.RescaleSlope
    transform.RescaleIntercept = first.RescaleIntercept
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for src in datasets:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = src.ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(src.PixelData for src in datasets)
    return ds


def test_enhanced_multiframe_builds_the_same_volume(cases):
    datasets = read(cases["FFS"], shuffle_seed=9)
    classic = load_volume(datasets)
    enhanced = load_volume([enhanced_from(datasets)])
    assert np.array_equal(classic.hu, enhanced.hu)
    assert np.allclose(classic.origin, enhanced.origin) and np.allclose(classic.direction, enhanced.direction)
    assert enhanced.frame_numbers is not None and sorted(enhanced.frame_numbers) == list(range(1, len(datasets) + 1))
    assert len(set(enhanced.sop_instance_uids)) == 1
    # each frame number points at the file that was stored as that frame
    by_uid = {ds.SOPInstanceUID: i + 1 for i, ds in enumerate(datasets)}
    assert [by_uid[u] for u in classic.sop_instance_uids] == enhanced.frame_numbers
    assert enhanced.slice_reference(0) == (enhanced.sop_instance_uids[0], enhanced.frame_numbers[0])


@pytest.fixture(scope="module")
def lidc_volume():
    return load_volume([pydicom.dcmread(p) for p in sorted(LIDC_SERIES.glob("*.dcm"))])


def test_real_lidc_series(lidc_volume):
    v = lidc_volume
    assert v.hu.shape == (261, 512, 512)
    assert v.spacing[0] == pytest.approx(1.25, abs=1e-4)
    assert v.spacing[1] == pytest.approx(0.681641, abs=1e-6)
    zs = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in LIDC_SERIES.glob("*.dcm")]
    ends = v.voxel_to_world(np.array([[0, 0, 0], [260, 0, 0]]))[:, 2]
    assert ends[0] == pytest.approx(min(zs)) and ends[1] == pytest.approx(max(zs))
    assert v.hu.min() == -1024.0  # the -2000 padding outside the field of view became air
    assert -1000 < float(np.median(v.hu[130, 200:300, 100:200])) < -600  # right lung


def test_pixel_data_left_on_disk_is_decoded_from_the_file_and_stays_there(tmp_path):
    """The node's job reads its series with the pixel data deferred (dicomnode.process.jobs): the
    volume is decoded from the files, so the datasets do not hold every slice's pixel bytes through
    detection, and the volume is the same as from fully read datasets."""
    from pydicom.dataelem import RawDataElement

    from dicomnode.process.jobs import DEFER_PIXELS_BYTES

    paths = sorted(LIDC_SERIES.glob("*.dcm"))
    deferred = [pydicom.dcmread(p, defer_size=DEFER_PIXELS_BYTES) for p in paths]
    whole = [pydicom.dcmread(p) for p in paths]
    volume = load_volume(deferred)
    assert np.array_equal(volume.hu, load_volume(whole).hu)
    for ds in deferred:
        elem = ds.get_item("PixelData", keep_deferred=True)
        assert isinstance(elem, RawDataElement) and elem.value is None, "pixel bytes read into the dataset"
    # what the overlays do later: a key slice's pixels still come when asked for
    assert np.array_equal(deferred[3].pixel_array, whole[3].pixel_array)
