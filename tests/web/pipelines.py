"""A test pipeline with findings: one synthetic part-solid nodule on the middle slice, characterised as
the issue 11 pipeline would (type, axes, solid component, location, Brock risk, Lung-RADS with its reason)
and with an exam summary whose risk inputs lack the patient's age, encoded with the real result builders
(SR + secondary-capture overlays), so the console has findings and overlay images without running the model."""
from __future__ import annotations

from pydicom.dataset import Dataset

from dicomnode.process.pipelines import PipelineContext, PipelineOutput
from dicomnode.results import ResultOptions, build_results
from inference.findings import (CoronaryCalciumSummary, ExamSummary, Finding, KeySlice, ModelIdentity,
                                NoduleLocation, OtherFinding, RiskInputs, SeriesResult, Verdict)

MODEL = ModelIdentity(name="test-nodule-model", version="0.0-test", weights_sha256="0" * 64, engine="test-cpu")
DIAMETER_MM = 9.5  # part-solid, mean diameter >= 6 mm with a 6-8 mm solid component: Lung-RADS 4A
SOLID_MM = 6.5
BROCK_RISK = 0.0834  # what the Brock model gives such a nodule: shown as 8%
MODEL_SCORE = 0.62  # the phantom-trained classifier's score: never shown as a probability of cancer
LAA950_PCT = 3.24
LUNG_VOLUME_ML = 4870.4
IMAGE_NOISE_HU = 17.6  # the series' noise (soft tissue), under the 25 HU above which LAA-950 is not used
CALCIUM_TEXT = "moderate coronary artery calcification (Agatston-equivalent 154 on this non-gated CT; CAC-DRS 2)"
RECOMMENDATION = "3-month LDCT; PET/CT may be considered if there is a solid nodule or solid component >= 8 mm (>= 268 mm3)."
EXAM = ExamSummary(
    lung_rads="4A", recommendation=RECOMMENDATION, lungs_fully_covered=True,
    risk_inputs=RiskInputs(age_years=None, sex="female", family_history="unknown", emphysema=False,
                           missing=("age", "family_history")),
    laa950_pct=LAA950_PCT, lung_volume_ml=LUNG_VOLUME_ML, highest_brock_risk=BROCK_RISK,
    verdict_reasons=("Lung-RADS 4A",), image_noise_hu=IMAGE_NOISE_HU,
    # moderate coronary calcium: the Lung-RADS S modifier is suggested (inference.clinical.significant)
    coronary_calcium=CoronaryCalciumSummary(154, "moderate", 4, 61.8, 130.0),
    significant_findings=(OtherFinding("coronary_calcium", CALCIUM_TEXT),),
)


def findings_pipeline(datasets: list[Dataset], context: PipelineContext) -> PipelineOutput:
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    key = ordered[len(ordered) // 2]
    row, column = int(key.Rows) / 2.0, int(key.Columns) / 2.0
    x0, y0, z0 = (float(v) for v in key.ImagePositionPatient)
    spacing = [float(v) for v in key.PixelSpacing]
    finding = Finding(
        center_mm=(x0 + column * spacing[1], y0 + row * spacing[0], z0), diameter_mm=DIAMETER_MM, volume_mm3=449.0,
        probability=0.93, model_score=MODEL_SCORE, lung_rads="4A",
        key_slice=KeySlice(str(key.SOPInstanceUID), str(key.SOPClassUID), row, column),
        radius_px=(4.0, 5.0), nodule_type="part_solid", margin="lobulated",
        location=NoduleLocation(lung="right", zone="upper", perifissural=True), long_axis_mm=10.6, short_axis_mm=8.4,
        solid_component_mm=SOLID_MM, solid_long_axis_mm=7.1, solid_short_axis_mm=5.9, brock_risk=BROCK_RISK,
        lung_rads_reasons=("part-solid >= 6 mm with a solid component of 6 to < 8 mm",), cyst="cavity",
    )
    result = SeriesResult(series_instance_uid=str(key.SeriesInstanceUID), verdict=Verdict.SUSPICIOUS,
                          verdict_probability=BROCK_RISK, model=MODEL, findings=[finding], exam=EXAM)
    context.progress("encoding results")
    objects = build_results(datasets, result, ResultOptions())
    return PipelineOutput(objects, verdict=result.verdict.value, findings=[finding],
                          summary={"model": MODEL.to_json(), "timings_s": {"inference": 0.4, "encoding": 0.2},
                                   "verdict_probability": BROCK_RISK, "exam": EXAM.to_json()})
