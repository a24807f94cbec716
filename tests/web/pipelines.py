"""A test pipeline with findings: one synthetic nodule on the middle slice, encoded with the real
result builders (SR + secondary-capture overlays), so the console has findings and overlay images
without running the model."""
from __future__ import annotations

from pydicom.dataset import Dataset

from dicomnode.process.pipelines import PipelineContext, PipelineOutput
from dicomnode.results import ResultOptions, build_results
from inference.findings import Finding, KeySlice, ModelIdentity, SeriesResult, Verdict

MODEL = ModelIdentity(name="test-nodule-model", version="0.0-test", weights_sha256="0" * 64, engine="test-cpu")
DIAMETER_MM = 9.5  # Lung-RADS 4A
MALIGNANCY = 0.62


def findings_pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    key = ordered[len(ordered) // 2]
    row, column = int(key.Rows) / 2.0, int(key.Columns) / 2.0
    x0, y0, z0 = (float(v) for v in key.ImagePositionPatient)
    spacing = [float(v) for v in key.PixelSpacing]
    finding = Finding(
        center_mm=(x0 + column * spacing[1], y0 + row * spacing[0], z0), diameter_mm=DIAMETER_MM, volume_mm3=449.0,
        probability=0.93, malignancy=MALIGNANCY, lung_rads="4A",
        key_slice=KeySlice(str(key.SOPInstanceUID), str(key.SOPClassUID), row, column),
    )
    result = SeriesResult(series_instance_uid=str(key.SeriesInstanceUID), verdict=Verdict.SUSPICIOUS,
                          verdict_probability=MALIGNANCY, model=MODEL, findings=[finding])
    context.progress("encoding results")
    objects = build_results(datasets, result, ResultOptions())
    return PipelineOutput(objects, verdict=result.verdict.value, findings=[finding],
                          summary={"model": MODEL.to_json(), "timings_s": {"inference": 0.4, "encoding": 0.2}})
