"""DICOM: a phantom written as a CT Image Storage series (one file per slice) plus `truth.json`."""
from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Unpack

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from inference.phantom.build import PhantomOptions, make_phantom
from inference.phantom.model import Phantom, PhantomCase
from inference.volume import CT_IMAGE_STORAGE


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(entropy_srcs=["dicomnode-phantom", str(seed), *map(str, parts)])


def slice_geometry(phantom: Phantom, stored: np.ndarray, k: int) -> tuple[list[float], list[float], np.ndarray]:
    """Image Orientation, Image Position and the stored pixels of slice k: feet-first supine images are
    mirrored left-right (the patient's right is then on the image's right), so the row direction flips."""
    cols = phantom.hu.shape[2]
    z = float(phantom.origin[2] + k * phantom.spacing[0])
    if phantom.patient_position == "FFS":
        ipp = [float(phantom.origin[0] + (cols - 1) * float(phantom.spacing[1])), float(phantom.origin[1]), z]
        return [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0], ipp, stored[k, :, ::-1]
    return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [float(phantom.origin[0]), float(phantom.origin[1]), z], stored[k]


def write_phantom_series(
    out_dir: str | Path, seed: int, *, fov_padding: bool = False, **options: Unpack[PhantomOptions]
) -> PhantomCase:
    """Write the phantom of `seed` (make_phantom options) as one CT Image Storage file per slice, plus truth.json.

    HFS series use ImageOrientationPatient 1\\0\\0\\0\\1\\0 and number instances from the head; FFS ones use
    -1\\0\\0\\0\\1\\0 and number from the feet, as scanners do. `fov_padding=True` marks pixels outside the
    reconstruction circle with PixelPaddingValue -2000.
    """
    phantom = make_phantom(seed, **options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = json.dumps(options, sort_keys=True, default=str)
    study_uid, series_uid, frame_uid = (_uid(seed, key, part) for part in ("study", "series", "frame"))
    prng = np.random.default_rng(seed + 7919)
    sex = str(prng.choice(["M", "F"]))
    age = int(prng.integers(50, 80))
    study_day = date(2024, 1, 1) + timedelta(days=int(prng.integers(0, 365)))
    birth = date(study_day.year - age, int(prng.integers(1, 13)), int(prng.integers(1, 29)))
    if (birth.month, birth.day) > (study_day.month, study_day.day):
        age -= 1

    n, rows, cols = phantom.hu.shape
    ffs = phantom.patient_position == "FFS"
    intercept = -1024.0
    stored = (phantom.hu.astype(np.int32) - int(intercept)).astype(np.int16)
    if fov_padding:
        yy, xx = np.ogrid[:rows, :cols]
        outside = (yy - (rows - 1) / 2) ** 2 + (xx - (cols - 1) / 2) ** 2 > (min(rows, cols) / 2) ** 2
        stored[:, outside] = -2000
    z_order = np.arange(n) if ffs else np.arange(n)[::-1]  # instance 1 is the first slice scanned
    files = []
    for instance, k in enumerate(z_order, start=1):
        iop, ipp, pixels = slice_geometry(phantom, stored, int(k))
        ds = _slice_dataset(
            seed=seed, key=key, instance=instance, pixels=np.ascontiguousarray(pixels), iop=iop, ipp=ipp,
            phantom=phantom, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, sex=sex, age=age,
            birth=birth, study_day=study_day, intercept=intercept, padding=fov_padding,
        )
        path = out / f"CT{instance:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    truth = {
        "seed": seed,
        "options": json.loads(key),
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "patient_position": phantom.patient_position,
        "shape_zyx": list(phantom.hu.shape),
        "origin_lps_mm": [round(float(v), 4) for v in phantom.origin],
        "spacing_zyx_mm": [round(float(v), 5) for v in phantom.spacing],
        "nodules": [nd.to_json() for nd in phantom.nodules],
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=2))
    return PhantomCase(out, files, truth_path, phantom, study_uid, series_uid)


def _slice_dataset(
    *, seed: int, key: str, instance: int, pixels: np.ndarray, iop: list[float], ipp: list[float], phantom: Phantom,
    study_uid: str, series_uid: str, frame_uid: str, sex: str, age: int, birth: date, study_day: date,
    intercept: float, padding: bool,
) -> Dataset:
    sop_uid = _uid(seed, key, "instance", instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    day = study_day.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime = "093000"
    ds.SeriesTime = "093100"
    ds.AcquisitionTime = ds.ContentTime = f"0931{min(instance, 5999) // 100:02d}"
    ds.AccessionNumber = f"PH{seed:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "dicomnode phantom"
    ds.ManufacturerModelName = "synthetic chest"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST LOW DOSE SCREENING (PHANTOM)"
    ds.SeriesDescription = f"Phantom chest {phantom.spacing[0]:g} mm"
    ds.PatientName = f"Phantom^{seed}"
    ds.PatientID = f"PHANTOM-{seed:06d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{phantom.slice_thickness_mm:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = f"{phantom.hu.shape[2] * phantom.spacing[2]:.1f}"
    ds.ReconstructionDiameter = f"{phantom.hu.shape[2] * phantom.spacing[2]:.1f}"
    ds.PatientPosition = phantom.patient_position
    ds.ConvolutionKernel = "STANDARD"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{seed % 100000}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:g}" for v in iop]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{ipp[2]:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ps = f"{phantom.spacing[1]:.6g}"
    ds.PixelSpacing = [ps, ps]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if padding:
        ds.PixelPaddingValue = -2000
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds
