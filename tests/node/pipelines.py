"""A small pipeline for node tests: one Secondary Capture per series, UIDs derived from the series.

It stands in for the lung-nodule pipeline where a test is about the node (routing, queue,
delivery), not about the model.
"""
from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomnode.process.pipelines import PipelineContext, PipelineOutput


def summary_pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
    if os.environ.get("TEST_PIPELINE_FAIL"):
        raise RuntimeError("test pipeline asked to fail")
    first = datasets[0]
    series_uid = str(first.SeriesInstanceUID)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["test-summary", series_uid, "sop"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["test-summary", series_uid, "series"])
    ds.StudyInstanceUID = first.StudyInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9999
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"test summary of {len(datasets)} instances"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((8, 8), len(datasets) % 256, dtype=np.uint8).tobytes()
    context.progress(f"summarised {len(datasets)} instances")
    return PipelineOutput([ds], verdict="done", summary={"instances": len(datasets)})


def gated_pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
    """Like summary_pipeline, but waits until the file named by TEST_PIPELINE_GATE exists, so a
    test can kill the node while the job is certainly running."""
    import time
    from pathlib import Path

    gate = Path(os.environ["TEST_PIPELINE_GATE"])
    deadline = time.monotonic() + 300
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} never appeared")
        context.progress("waiting for the test's gate")
        time.sleep(0.2)
    return summary_pipeline(datasets, context)


def stall_after_first_pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
    """Like summary_pipeline, but where TEST_PIPELINE_STALL_DIR is set, every job after the process's
    first stalls (bounded): a test can kill the node while a job is certainly running, after a
    first result of this node is certainly in the outbox."""
    import time
    from pathlib import Path

    stall_dir = os.environ.get("TEST_PIPELINE_STALL_DIR")
    if stall_dir:
        marks = Path(stall_dir)
        marks.mkdir(exist_ok=True)
        earlier = list(marks.iterdir())
        (marks / f"{context.job_id}").touch()
        if earlier:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                context.progress("stalled by the test")
                time.sleep(0.5)
            raise TimeoutError("stalled job was never killed")
    return summary_pipeline(datasets, context)
