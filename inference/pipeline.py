"""One series in, one `SeriesResult` out: load -> preprocess -> detect -> model score -> characterise
(segmentation, type, calcification, margin, location, emphysema) -> Lung-RADS v2022 and Brock -> exam verdict.

The node keeps one `LungNodulePipeline` per model: the networks and engines load once in
`__init__`; `analyze` is then called per series. Weights come from a folder holding
`manifest.json` (file names, SHA-256s, version, report threshold), read by
`inference.weights_bundle`; the packaged demo weights live in `inference/weights/`. Every file's
SHA-256 is checked against the manifest before loading.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from inference.characterize import ExamCharacteristics, NoduleCharacteristics, characterize_exam, characterize_nodule
from inference.characterize.calcification import CALCIUM_HU
from inference.characterize.cardiac import coronary_calcium, is_axial
from inference.characterize.emphysema import LAA950_MAX_NOISE_HU
from inference.characterize.measure import size_caveat, slices_across, sphere_volume_mm3
from inference.characterize.model import Axes, Cyst
from inference.characterize.shape import BAND_ELONGATION
from inference.clinical import (
    Exam,
    FamilyHistory,
    Lung,
    LungRadsCategory,
    Nodule,
    NoduleType,
    Sex,
    Zone,
    brock_risk_for_nodule,
    classify_exam,
    exam_verdict,
)
from inference.clinical.brock import AGE_CENTRE_YEARS
from inference.clinical.significant import significant_findings, whole_score
from inference.clinical.types import airway_or_none, cyst_or_none, margin_or_not_assessed
from inference.contrast import contrast_agent, contrast_calcium_note, contrast_exam_note
from inference.detect import MAX_FINDINGS, REPORT_LOGIT, Candidate, Mode, detect, lesions_over_threshold, logit_of
from inference.findings import (
    CoronaryCalciumSummary,
    ExamSummary,
    Finding,
    KeySlice,
    ModelIdentity,
    NoduleLocation,
    NotAnalysable,
    OtherFinding,
    RiskInputs,
    SeriesResult,
    Verdict,
)
from inference.orientation import LpsView, lps_view
from inference.volume import Volume, VolumeLimits, load_volume
from inference.weights_bundle import load_weights_bundle

if TYPE_CHECKING:
    from inference.preprocess import Preprocessed
    from inference.engines.triton_engine import TritonOptions

log = logging.getLogger(__name__)

MODEL_NAME = "dicomnode-dpn26"
# working memory of the detector's full-resolution layers (inference.engines.slabbed; [inference] detector_memory_mb)
DETECTOR_MEMORY_MB = 512
# Brock's emphysema input is "yes" from this LAA-950 (% of lung volume below -950 HU): the COPDGene
# definition of quantitative CT emphysema, LAA-950 >= 5 % (e.g. Amaza et al., Int J Chron Obstruct Pulmon
# Dis 2021;16:1231-1242; -950 HU after Gevenois et al., AJRCCM 1996;154:187-192).
EMPHYSEMA_LAA950_PCT = 5.0
# pleural nodule shape: "oval/lentiform" when the short axis is at most this share of the long axis
PLEURAL_ELONGATED_RATIO = 0.75
PLEURAL_BENIGN_MAX_MM = 10.0  # Lung-RADS v2022 juxtapleural rule: < 10 mm mean diameter
VALIDATED_KEY = "malignancy_validated_on_real_data"

ProgressFn = Callable[[str], None]


def _detection_mode(mode: str) -> Mode:
    if mode == "whole":
        return "whole"
    if mode == "tiled":
        return "tiled"
    raise ValueError(f"unknown detection mode {mode!r}: 'whole' or 'tiled'")


class LungNodulePipeline:
    """DICOM series -> findings and verdict with one detector + malignancy model, loaded once."""

    def __init__(
        self,
        engine: str = "auto",
        mode: str = "whole",
        threads: int = 0,
        weights: str | Path | None = None,
        cache_dir: str | Path | None = None,
        report_threshold: float | None = None,
        max_findings: int = MAX_FINDINGS,
        limits: VolumeLimits | None = None,
        family_history: str = "unknown",
        emphysema_laa950_pct: float = EMPHYSEMA_LAA950_PCT,
        triton: TritonOptions | None = None,
        detector_memory_mb: int = DETECTOR_MEMORY_MB,
    ) -> None:
        """`report_threshold` is a detection probability; None takes the manifest's calibrated one,
        else DeepLung's report logit -2. `threads` 0 leaves the engine's default. `family_history`
        ("yes" | "no" | "unknown") and `emphysema_laa950_pct` feed the Brock model (settings [clinical]).
        `max_findings`: the most lesions over the threshold reported (settings [clinical]); the exam says how many
        more there were.
        `triton`: the server for engine "triton".
        `detector_memory_mb`: the onnxruntime detector runs its full-resolution layers in z-slabs within
        this budget (same output as one pass; 0: one pass of the whole graph, about 4.5 GB for a chest CT)."""
        import torch

        from inference.classify import MalignancyClassifier
        from inference.engines import make_engine
        from inference.nets.checkpoint import load_into
        from inference.nets.classifier import DPNClassifierNet
        from inference.nets.dpn3d import DPN26Detector

        detection_mode = _detection_mode(mode)
        try:
            self.family_history = FamilyHistory(family_history)
        except ValueError:
            raise ValueError(f"family_history must be 'yes', 'no' or 'unknown', got {family_history!r}") from None
        if not (isinstance(emphysema_laa950_pct, (int, float)) and 0.0 <= emphysema_laa950_pct <= 100.0):
            raise ValueError(f"emphysema_laa950_pct must be a percentage 0..100, got {emphysema_laa950_pct!r}")
        self.emphysema_laa950_pct = float(emphysema_laa950_pct)
        if isinstance(max_findings, bool) or not isinstance(max_findings, int) or max_findings < 1:
            raise ValueError(f"max_findings must be a whole number of 1 or more, got {max_findings!r}")
        self.bundle = load_weights_bundle(weights)
        # only weights whose manifest declares the malignancy head validated on real data may headline its score
        self.model_score_validated = self.bundle.manifest.get(VALIDATED_KEY) is True
        self.mode = detection_mode
        self.max_findings = max_findings
        self.limits = limits
        n_threads = threads or None
        if n_threads:
            torch.set_num_threads(n_threads)
        if report_threshold is None:
            report_threshold = self.bundle.manifest.get("report_threshold_probability")
        self.report_logit = REPORT_LOGIT if report_threshold is None else logit_of(float(report_threshold))

        detector = DPN26Detector()
        load_into(detector, self.bundle.detector)
        detector.eval()
        det_sha = self.bundle.sha256("detector")
        self.detector = make_engine(engine, network="detector", model=detector, weights_sha256=det_sha,
                                    threads=n_threads, cache_dir=cache_dir, triton=triton,
                                    weights_version=self.bundle.version, slab_memory_mb=detector_memory_mb or None)
        self.classifier: MalignancyClassifier | None = None
        if self.bundle.malignancy_gbm is not None:
            features_fn = None
            if self.bundle.classifier_net is not None:
                net = DPNClassifierNet()
                load_into(net, self.bundle.classifier_net)
                net.eval()
                self.classifier_engine = make_engine(
                    engine, network="classifier", model=net, weights_sha256=self.bundle.sha256("classifier_net"),
                    threads=n_threads, cache_dir=cache_dir, triton=triton, weights_version=self.bundle.version,
                )
                features_fn = self.classifier_engine.run
            self.classifier = MalignancyClassifier.load(
                self.bundle.malignancy_gbm, features_fn=features_fn,
                expected_sha256=self.bundle.sha256("malignancy_gbm"),
            )
        self.identity = ModelIdentity(
            name=str(self.bundle.manifest.get("name", MODEL_NAME)), version=self.bundle.version,
            weights_sha256=det_sha, engine=self.detector.name, bundle_sha256=self.bundle.combined_sha256(),
        )

    # -----------------------------------------------------------------------------------------

    def analyze(self, datasets: Sequence[Dataset], progress: ProgressFn | None = None) -> SeriesResult:
        """Analyse one series; a series the model cannot read gives verdict NOT_ANALYSED with the reason."""
        say = progress or (lambda _msg: None)
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        self.detector.ensure_ready()  # a remote engine that is down: fail fast, before the preprocessing
        series_uid = next((str(ds.get("SeriesInstanceUID", "")) for ds in datasets if "SeriesInstanceUID" in ds), "")
        try:
            say("loading images")
            t = time.perf_counter()
            volume = load_volume(datasets, self.limits)
            timings["load"] = time.perf_counter() - t
        except NotAnalysable as exc:
            timings["total"] = time.perf_counter() - t_all
            return SeriesResult(series_uid, Verdict.NOT_ANALYSED, 0.0, self.identity, [], str(exc), timings)
        header = next((ds for ds in datasets if "SOPInstanceUID" in ds), datasets[0] if datasets else None)
        result = self.analyze_volume(volume, progress=say, header=header)
        result.timings_s = {**timings, **result.timings_s, "total": time.perf_counter() - t_all}
        return result

    def analyze_volume(self, volume: Volume, progress: ProgressFn | None = None,
                       header: Dataset | None = None) -> SeriesResult:
        """Findings and exam statement for one volume; `header` (any instance of the series) gives the
        patient's age and sex for the Brock model (absent: both missing, and the result says so), the slice
        thickness and whether intravenous contrast was given."""
        from inference.preprocess import preprocess

        say = progress or (lambda _msg: None)
        timings: dict[str, float] = {}
        say("preprocessing (lung mask, 1 mm resampling)")
        t = time.perf_counter()
        view = lps_view(volume)  # preprocessing, detection, model score and each nodule read the series as trained
        pre = preprocess(view.volume)
        timings["preprocess"] = time.perf_counter() - t

        say(f"detecting nodules ({self.detector.name}, {self.mode})")
        t = time.perf_counter()
        candidates = detect(
            self.detector, pre.image, mode=self.mode,
            progress=lambda done, total: say(f"detecting: tile {done}/{total}"),
        )
        timings["detect"] = time.perf_counter() - t
        lesions = lesions_over_threshold(candidates, self.report_logit)
        reported = lesions[: self.max_findings]

        say(f"classifying {len(reported)} finding(s)")
        t = time.perf_counter()
        scores = self._model_scores(pre, reported)
        timings["classify"] = time.perf_counter() - t

        say("characterising nodules and exam (segmentation, type, Lung-RADS, Brock)")
        t = time.perf_counter()
        # the source-resolution lung mask (from preprocessing's segmentation, not a second one): side/zone of
        # each nodule, lung volume, LAA-950 and coverage
        lps_lungs = pre.source_lung_mask()
        lungs = view.volume_mask(lps_lungs)
        exam_chars = characterize_exam(volume.hu, volume.spacing, lungs)
        contrast = contrast_agent(header)
        calcium = coronary_calcium_summary(volume, lungs, exam_chars.image_noise_hu, contrast)
        measured = [self._characterize(view, pre.to_source_voxel(np.asarray(cand.zyx, float)), cand, lps_lungs)
                    for cand in reported]
        patient = patient_inputs(header)
        findings, exam, verdict = assess(measured, scores, exam_chars, patient, self.family_history,
                                         self.emphysema_laa950_pct, volume, slice_thickness_mm(volume, header),
                                         not_reported=len(lesions) - len(reported), contrast=contrast,
                                         calcium=calcium)
        timings["characterize"] = time.perf_counter() - t

        headline = max((f.brock_risk or 0.0 for f in findings), default=0.0)
        if self.model_score_validated:
            headline = max((f.model_score for f in findings), default=0.0)
            exam = replace(exam, headline="model")
        result = SeriesResult(volume.series_instance_uid, verdict, float(headline), self.identity, findings, None,
                              timings, exam)
        if volume.warnings:
            log.info("series %s: %s", volume.series_instance_uid, "; ".join(volume.warnings))
        return result

    def _model_scores(self, pre: Preprocessed, cands: list[Candidate]) -> np.ndarray:
        """The DeepLung DPN + GBM score per candidate (zeros without a malignancy head)."""
        if not cands or self.classifier is None:
            return np.zeros(len(cands))
        centres = np.array([c.zyx for c in cands], dtype=np.float64)
        return np.asarray(self.classifier.predict_image(pre.image, centres, [c.diameter_mm for c in cands]), float)

    def _characterize(self, view: LpsView, at: np.ndarray, cand: Candidate, lungs: np.ndarray) -> Measured:
        """The nodule measured on the view in LPS (`at`: its centre there; `lungs`: the view's lung mask), so that its
        measurements do not follow the way the series is stored (a pixel grid's ties and strips run one way), and its
        positions given back in the series' own voxels. The exam's measures read the series as stored
        (inference.orientation says why)."""
        chars = characterize_nodule(view.volume.hu, view.volume.spacing, at, cand.diameter_mm, lungs,
                                    direction=view.volume.direction)
        return Measured(cand, view.to_volume_voxel(at), view.characteristics_in_volume(chars))

    def close(self) -> None:
        self.detector.close()
        engine = getattr(self, "classifier_engine", None)
        if engine is not None:
            engine.close()


def coronary_calcium_summary(volume: Volume, lungs: np.ndarray, noise_hu: float | None,
                             contrast: str | None) -> CoronaryCalciumSummary:
    """The exam's coronary artery calcium, or why it was not measured: enhanced blood reads over the calcium
    threshold, so a series with intravenous contrast is not scored."""
    if contrast:
        return CoronaryCalciumSummary(None, note=f"not measured: intravenous contrast ({contrast}) makes blood read "
                                                 "as calcium")
    if not is_axial(volume.direction):
        return CoronaryCalciumSummary(None, note="not measured: the series is not axial")
    try:
        measured = coronary_calcium(volume.hu, volume.spacing, lungs, volume.direction, noise_hu)
    except Exception as exc:  # an extra statement: an anatomy the heart finder did not foresee must not cost the exam
        log.exception("series %s: coronary calcium not measured", volume.series_instance_uid)
        return CoronaryCalciumSummary(None, note=f"not measured: the scoring failed ({type(exc).__name__})")
    if measured is None:
        return CoronaryCalciumSummary(None, note="not measured: the heart was not found in the scan")
    return CoronaryCalciumSummary(whole_score(measured.agatston), measured.grade, measured.lesions, measured.volume_mm3,
                                  measured.threshold_hu, measured.note)


def key_slice(volume: Volume, src_zyx: np.ndarray) -> KeySlice:
    """The source slice nearest a (fractional) voxel position, with its pixel row and column."""
    k = int(np.clip(np.rint(src_zyx[0]), 0, volume.shape[0] - 1))
    uid, _frame = volume.slice_reference(k)
    return KeySlice(sop_instance_uid=uid, sop_class_uid=volume.sop_class_uid, row=float(src_zyx[1]), column=float(src_zyx[2]))


# -- patient inputs from the DICOM header -----------------------------------------------------------
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_AGE_UNIT_YEARS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


@dataclass(frozen=True)
class PatientInputs:
    age_years: float | None
    sex: Sex | None


def _dicom_date(value: object) -> date | None:
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def patient_age_years(ds: Dataset | None) -> float | None:
    """PatientAge ("065Y", also D/W/M units), else PatientBirthDate with StudyDate; None when neither works."""
    if ds is None:
        return None
    m = _AGE.match(str(ds.get("PatientAge", "") or ""))
    if m:
        return round(int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2)], 2)
    born, seen = _dicom_date(ds.get("PatientBirthDate")), _dicom_date(ds.get("StudyDate"))
    if born is None or seen is None or seen < born:
        return None
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return float(years)


def patient_sex(ds: Dataset | None) -> Sex | None:
    """PatientSex M/F; O, empty or absent -> None (missing: the Brock model's reference value is used)."""
    value = str((ds.get("PatientSex", "") if ds is not None else "") or "").strip().upper()
    return {"M": Sex.MALE, "F": Sex.FEMALE}.get(value)


def patient_inputs(ds: Dataset | None) -> PatientInputs:
    age = patient_age_years(ds)
    if age is not None and not 0.0 <= age <= 120.0:
        age = None  # an implausible header value is treated as missing, not fed to the model
    return PatientInputs(age, patient_sex(ds))


# -- from measurements to findings, Lung-RADS, Brock and the verdict -----------------------------
@dataclass(frozen=True)
class Measured:
    """One reported candidate with its centre in source voxels and its characterisation."""

    candidate: Candidate
    source_zyx: np.ndarray
    chars: NoduleCharacteristics


def _cyst(c: NoduleCharacteristics) -> Cyst | None:
    """The cyst graded by the cyst rules alone (`Cyst.is_cyst`), measured by its own outline; None for none, a
    nodule's cavity, and a cyst with an opacity beside it (measured and graded as a nodule too)."""
    return c.cyst if c.cyst is not None and c.cyst.is_cyst else None


def _lesion_axes(c: NoduleCharacteristics) -> Axes | None:
    """The axes reported: a cyst's from its wall's outer edge (`characterize.cyst`: a thin wall is more than the
    segmentation holds), else the segmentation's."""
    cyst = _cyst(c)
    return cyst.axes if cyst is not None else c.axes


def _cyst_note(c: NoduleCharacteristics) -> str | None:
    """What the reader should know of an air-filled lumen in the lesion."""
    if c.cyst is None:
        return None
    seen = c.cyst.describe()
    if c.cyst.kind == "cavity":
        return f"{seen}; the lumen is under half the lesion's diameter: a nodule with a cavity, graded by its size, whole"
    if c.cyst.kind == "with_opacity":
        return (f"{seen} (a cancer's pattern): graded both as an atypical cyst and by the size of the lesion as a "
                "nodule, the higher category")
    partly = ("; graded as an atypical cyst, as a thickening could hide where its wall lies against other structures: "
              "if the images show it thin throughout, it is a thin-walled cyst, benign and not classified"
              if c.cyst.kind == "thin_walled_in_part" else "")
    return (f"{seen}{partly}; graded by the Lung-RADS v2022 cyst rules, not by size; its volume is that of a sphere of "
            "its mean diameter; the Brock model is for nodules and is not computed")


def _airway_note(c: NoduleCharacteristics) -> str | None:
    """What the reader should know of a lesion inside an airway's lumen."""
    if c.airway is None:
        return None
    return (f"{c.airway.describe()}: an airway nodule (endobronchial or endotracheal), graded by the Lung-RADS v2022 "
            "airway rules; the airway's level comes from its calibre, not from tracing its generation; mucus can look "
            "the same (a follow-up after coughing tells them apart); the Brock model is for nodules in the lung and "
            "is not computed")


def _mean_diameter(m: Measured) -> tuple[float, str | None]:
    """The Lung-RADS mean diameter, and a note when it had to come from the detector."""
    cyst = _cyst(m.chars)
    if cyst is not None:
        return float(cyst.axes.mean_mm), None
    axes = m.chars.axes
    if axes is not None and axes.mean_mm > 0:
        # measured, but possibly doubtful (e.g. cut by the field of view): the reader must see why
        return float(axes.mean_mm), None if m.chars.segmentation_ok else m.chars.reason
    why = m.chars.reason or "segmentation failed"
    return (float(round(m.candidate.diameter_mm, 1)),
            f"{why}; the mean diameter is the detector's estimate and the volume that of a sphere of it")


def _pleural_shape_benign(c: NoduleCharacteristics, mean_mm: float) -> bool | None:
    """Lung-RADS v2022 juxtapleural rule input: True only for a juxtapleural, smooth, solid nodule under
    10 mm whose axial section is elongated (short/long <= PLEURAL_ELONGATED_RATIO: oval or lentiform).
    None when the nodule is not juxtapleural (not assessed); False when juxtapleural but not that shape."""
    if not c.location.juxtapleural:
        return None
    if c.axes is None or c.axes.long_mm <= 0:
        return False
    elongated = c.axes.short_mm / c.axes.long_mm <= PLEURAL_ELONGATED_RATIO
    return bool(c.type == "solid" and c.margin == "smooth" and mean_mm < PLEURAL_BENIGN_MAX_MM and elongated)


def _size_note(c: NoduleCharacteristics, slice_mm: float | None) -> str | None:
    """Why the measured size is less reliable (measure.size_caveat), for the reader to know before relying on the
    volume or its growth: much of the outline borders other structures (the size depends on where the segmentation
    cut, measure.contact_share), or a part-solid or ground-glass nodule has few slices through it (its top and bottom
    slices mix its ground glass, the lung and its core in one value). `slice_mm` None: the thickness is unknown, and
    only the contact is judged."""
    if not c.segmentation_ok:
        return None
    caveat = size_caveat(c.type, c.volume_mm3, c.contact_share, 0.0 if slice_mm is None else slice_mm)
    if caveat == "contact":
        return (f"borders a vessel, an airway or the pleura over {c.contact_share:.0%} of its surface: its volume and "
                "diameters depend on where the segmentation separated them and are less reliable")
    if caveat == "few slices" and slice_mm is not None:
        return (f"a non-solid nodule about {slices_across(c.volume_mm3, slice_mm):.1f} slices of {slice_mm:g} mm "
                "across: its top and bottom slices hold it only in part, mixed with the lung in one value, so its "
                "volume is less reliable")
    return None


def _calcium_note(c: NoduleCharacteristics, category: LungRadsCategory) -> str | None:
    """Where the image's noise raised the calcium threshold over CALCIUM_HU (calcification.calcium_threshold_hu: a
    low-dose scan's noise would otherwise read soft tissue as calcium) and a solid nodule read without calcification
    is in a category that a benign calcification would make 1 (3 or higher), the reader should look for a fainter
    one on the images. At 70 HU of noise (docs/characterization.md, "Fiftieth session") the crop harness misses 34 of
    the 241 painted calcifications (8 at the phantoms' 20 HU); 31 of those nodules carry this note. Solid only: a
    calcification lies in soft tissue, and the phantoms paint none elsewhere."""
    threshold = c.features.get("calcium_threshold_hu")
    if (not c.segmentation_ok or c.calcified or c.type != "solid" or threshold is None
            or threshold <= CALCIUM_HU or category.rank < LungRadsCategory.C3.rank):
        return None
    return (f"calcium is read above {threshold:.0f} HU at this image's noise ({CALCIUM_HU:g} HU on a quieter scan): a "
            "fainter calcification would not be seen; if the images show one in a benign pattern (central, diffuse, "
            "popcorn, laminated), the nodule is Lung-RADS 1")


def _held_note(c: NoduleCharacteristics) -> str | None:
    """Where the segmentation had to be held to the detector's extent (characterize.characterize_nodule), the
    size is the detector's as much as the image's: the reader should measure it before acting on it."""
    if not c.segmentation_ok or not c.held_to_detector:
        return None
    return ("lies among vessels or tissue of its own density with no visible edge between them: the segmentation was "
            "held to the detector's extent, so its size follows the detector's estimate; measure it by hand")


def clinical_nodule(m: Measured, slice_mm: float | None = None) -> tuple[Nodule, str | None]:
    """The clinical `Nodule` of one characterised candidate, and a note about what was assumed; `slice_mm`: the
    series' slice thickness (`slice_thickness_mm`), None where unknown."""
    c = m.chars
    mean_mm, diameter_note = _mean_diameter(m)
    cyst = _cyst(c)
    axes = _lesion_axes(c)
    notes = [diameter_note, _cyst_note(c), _airway_note(c)]
    if cyst is None:
        notes += [_size_note(c, slice_mm), _held_note(c)]
    kind = NoduleType(c.type) if cyst is None else NoduleType.SOLID  # a cyst's wall is soft tissue
    solid_mm = c.solid_component_mm if c.solid_axes is not None else 0.0
    if kind is NoduleType.PART_SOLID and solid_mm <= 0:
        kind = NoduleType.GROUND_GLASS  # no measurable solid part: graded as ground glass
        notes.append("no measurable solid component: graded as ground glass")
    nodule = Nodule(
        type=kind, mean_diameter_mm=mean_mm, calcified=c.calcified, margin=margin_or_not_assessed(c.margin),
        volume_mm3=c.volume_mm3 if c.volume_mm3 > 0 and cyst is None else None,
        longest_diameter_mm=axes.long_mm if axes is not None and axes.long_mm > 0 else None,
        solid_component_mm=solid_mm if kind is NoduleType.PART_SOLID else None,
        solid_component_volume_mm3=(c.solid_volume_mm3 if kind is NoduleType.PART_SOLID and c.solid_volume_mm3 > 0
                                    else None),
        juxtapleural=c.location.juxtapleural, perifissural=c.location.perifissural,
        pleural_shape_benign=_pleural_shape_benign(c, mean_mm),
        lung=Lung(c.location.lung) if c.location.lung else None,
        zone=Zone(c.location.zone) if c.location.zone else None,
        cyst=cyst_or_none(c.cyst.kind if c.cyst is not None else None),
        airway=airway_or_none(c.airway.level if c.airway is not None else None),
    )
    return nodule, "; ".join(filter(None, notes)) or None


# ACR Lung Cancer Screening Center designation, minimum technical specifications: reconstructed slices of
# 2.5 mm or less (1.0 mm or less preferred). Thicker slices blur a small nodule along z: on phantoms with
# 2.5-3 mm slices 86-94 % of nodules >= 6 mm were segmented within 15 % of their volume, 93-99 % at
# 0.625-2.5 mm (README, "Clinical findings").
SCREENING_MAX_SLICE_MM = 2.5


def slice_thickness_mm(volume: Volume, header: Dataset | None) -> float:
    """The series' slice thickness for the screening check: the larger of the slice spacing and the header's
    SliceThickness (an overlapping reconstruction has thicker slices than their spacing); a missing or
    implausible header value is ignored."""
    spacing = float(volume.spacing[0])
    raw = header.get("SliceThickness") if header is not None else None
    try:
        stated = float(raw) if raw not in (None, "") else 0.0
    except (TypeError, ValueError):
        stated = 0.0
    return max(spacing, stated) if 0.0 < stated <= 20.0 else spacing


def _fat_note(c: NoduleCharacteristics) -> str | None:
    """A solid nodule with a focus of fat (`characterize.fat`, -120 ... -40 HU, clear of air): Lung-RADS v2022 calls a
    fat-containing nodule benign (category 1). The node leaves the category to its size and tells the reader, who
    confirms the fat on the images: a false category 1 would call a possible cancer benign, and the rule has met no
    real hamartoma (the phantoms paint no fat; it is shown on spheres)."""
    volume = c.features.get("fat_mm3", 0.0)
    if not c.segmentation_ok or c.type != "solid" or volume <= 0.0:
        return None
    return (f"fat inside the nodule ({c.features.get('fat_hu', 0.0):.0f} HU over {volume:.0f} mm3): a fat-containing "
            "nodule (a hamartoma) is Lung-RADS 1 once the images confirm fat (not small air bubbles); the category "
            "here is by size")


def _band_note(c: NoduleCharacteristics) -> str | None:
    """A band- or plate-like lesion (`shape.BAND_ELONGATION`: its longest principal extent 4 x its thinnest or more) is
    more often a scar or atelectasis than a nodule. Its category stays by size (a cancer can be elongated too); the
    reader confirms it is a nodule before acting on it. A cyst is measured by its own rules."""
    long_mm, thin_mm = c.features.get("extent_long_mm", 0.0), c.features.get("extent_thin_mm", 0.0)
    if not c.segmentation_ok or c.cyst is not None or thin_mm <= 0 or long_mm < BAND_ELONGATION * thin_mm:
        return None
    return (f"band- or plate-like ({long_mm:.0f} mm long, {thin_mm:.0f} mm thick in 3D): a linear scar or atelectasis "
            "is not a nodule; its category is by size, for a nodule")


def _thick_slice_note(thickness_mm: float) -> str | None:
    if thickness_mm <= SCREENING_MAX_SLICE_MM + 0.01:
        return None
    return (f"slice thickness or spacing {thickness_mm:.1f} mm, over the {SCREENING_MAX_SLICE_MM:g} mm of screening CT "
            "(ACR; 1 mm preferred): nodule volumes and the sizes of small nodules are less reliable")


def _noise_note(exam_chars: ExamCharacteristics) -> str | None:
    if exam_chars.laa950_reliable or exam_chars.image_noise_hu is None:
        return None
    return (f"image noise {exam_chars.image_noise_hu:.0f} HU, over the {LAA950_MAX_NOISE_HU:g} HU up to which LAA-950 "
            f"holds: its {exam_chars.laa950_pct:.1f} % overstates emphysema (noise moves normal lung below -950 HU) "
            "and is not used; Brock's emphysema input is unknown, counted as no")


def _not_reported_note(reported: int, not_reported: int) -> str:
    return (f"{not_reported} more lesion(s) over the detection threshold not reported (only the {reported} most "
            "probable are: settings [clinical] max_findings); the exam category does not include them, the Brock "
            "nodule count does: read the whole series")


def _missing_note(patient: PatientInputs) -> str | None:
    missing = []
    if patient.age_years is None:
        missing.append(f"age ({AGE_CENTRE_YEARS:g} years assumed)")
    if patient.sex is None:
        missing.append("sex (male assumed, the model's reference)")
    if not missing:
        return None
    return "Brock risk computed without the patient's " + " and ".join(missing) + ": not in the DICOM header"


def _centre(m: Measured) -> np.ndarray:
    """The finding's centre: the segmentation centroid when the segmentation is ok (it is where the measured
    nodule is; the detector's centre comes from a 1 mm resampled grid), else the detector's centre."""
    if m.chars.segmentation_ok:
        return np.asarray(m.chars.centroid_zyx, float)
    return m.source_zyx


def assess(
    measured: list[Measured], scores: np.ndarray, exam_chars: ExamCharacteristics, patient: PatientInputs,
    family_history: FamilyHistory, emphysema_threshold_pct: float, volume: Volume, slice_mm: float,
    not_reported: int = 0, contrast: str | None = None, calcium: CoronaryCalciumSummary | None = None,
) -> tuple[list[Finding], ExamSummary, Verdict]:
    """Lung-RADS per nodule and exam, Brock per nodule and the exam verdict, as the findings contract.
    `not_reported`: lesions over the report threshold past the reported ones (max_findings); Brock's nodule count
    includes them, and the exam says so. `contrast`: the intravenous contrast agent the header names
    (`contrast.contrast_agent`; None: none given), which the exam and every nodule read calcified mention.
    `calcium`: the exam's coronary calcium (`coronary_calcium_summary`), which with emphysema may suggest the
    Lung-RADS S modifier (`clinical.significant`)."""
    built = [clinical_nodule(m, slice_mm) for m in measured]
    nodules = tuple(n for n, _ in built)
    covered = exam_chars.lungs_fully_covered
    exam = Exam(covered, nodules, None if covered else (exam_chars.reason or "the lungs are not fully covered"))
    assessment = classify_exam(exam)
    # a noisy image's LAA-950 is no evidence of emphysema (emphysema.LAA950_MAX_NOISE_HU): the input is missing
    emphysema = exam_chars.laa950_reliable and exam_chars.laa950_pct >= emphysema_threshold_pct
    missing_note = _missing_note(patient)
    findings: list[Finding] = []
    # the Brock model is for nodules in the lung: a cyst graded by the cyst rules alone, or an airway nodule, gets no
    # risk and is not counted (_cyst_note, _airway_note say so); a cyst whose opacity is graded as a nodule is one
    is_nodule = [(n.cyst is None or n.cyst.is_nodule_too) and n.airway is None for n in nodules]
    count = sum(is_nodule) + not_reported
    for m, (nodule, note), row, score, brock_applies in zip(measured, built, assessment.nodules, scores, is_nodule):
        brock = None if not brock_applies else brock_risk_for_nodule(
            nodule, nodule_count=count, emphysema=emphysema, age_years=patient.age_years, sex=patient.sex,
            family_history=family_history).risk
        notes = [note, _band_note(m.chars), _calcium_note(m.chars, row.category), _fat_note(m.chars),
                 contrast_calcium_note(contrast, m.chars.calcified), missing_note]
        findings.append(_finding(volume, m, nodule, row.category.value, row.reasons, brock, float(score),
                                 "; ".join(filter(None, notes)) or None))
    highest = max((f.brock_risk for f in findings if f.brock_risk is not None), default=None)
    verdict = exam_verdict(assessment.category, highest, highest_nodule_category=assessment.highest_nodule_category)
    missing = tuple(name for name, absent in (("age", patient.age_years is None), ("sex", patient.sex is None),
                                              ("family_history", family_history is FamilyHistory.UNKNOWN),
                                              ("emphysema", not exam_chars.laa950_reliable)) if absent)
    inputs = RiskInputs(age_years=patient.age_years, sex=patient.sex.value if patient.sex else None,
                        family_history=family_history.value, emphysema=emphysema, missing=missing)
    caveats = [assessment.reason] if assessment.category.value == "0" else []
    if not_reported:
        caveats.append(_not_reported_note(len(measured), not_reported))
    for caveat in (_thick_slice_note(slice_mm), contrast_exam_note(contrast)):
        if caveat:
            caveats.append(caveat)
    if missing_note:
        caveats.append(missing_note)
    noise = _noise_note(exam_chars)
    if noise:
        caveats.append(noise)
    if family_history is FamilyHistory.UNKNOWN:
        caveats.append("family history of lung cancer unknown (settings [clinical]): counted as no")
    summary = ExamSummary(
        lung_rads=assessment.category.value, recommendation=assessment.recommendation,
        lungs_fully_covered=covered, risk_inputs=inputs, reason="; ".join(caveats) or None,
        laa950_pct=exam_chars.laa950_pct, lung_volume_ml=exam_chars.lung_volume_ml, highest_brock_risk=highest,
        verdict_reasons=verdict.reasons, image_noise_hu=exam_chars.image_noise_hu, coronary_calcium=calcium,
        significant_findings=tuple(OtherFinding(f.kind.value, f.text) for f in significant_findings(
            calcium_agatston=None if calcium is None else calcium.agatston, laa950_pct=exam_chars.laa950_pct,
            laa950_reliable=exam_chars.laa950_reliable, emphysema_threshold_pct=emphysema_threshold_pct)),
    )
    return findings, summary, verdict.verdict


def _finding(volume: Volume, m: Measured, nodule: Nodule, lung_rads: str, reasons: tuple[str, ...],
             brock: float | None, score: float, note: str | None) -> Finding:
    c = m.chars
    centre = _centre(m)
    x_mm, y_mm, z_mm = volume.voxel_to_world(centre)
    mean_mm = nodule.mean_diameter_mm
    radius = mean_mm / 2
    axes, solid = _lesion_axes(c), c.solid_axes
    part_solid = nodule.type is NoduleType.PART_SOLID
    return Finding(
        center_mm=(float(x_mm), float(y_mm), float(z_mm)),
        diameter_mm=float(mean_mm),
        volume_mm3=float(nodule.volume_mm3) if nodule.volume_mm3 else sphere_volume_mm3(mean_mm),
        probability=float(m.candidate.probability),
        model_score=score,
        lung_rads=lung_rads,
        key_slice=key_slice(volume, centre),
        radius_px=(radius / float(volume.spacing[1]), radius / float(volume.spacing[2])),
        nodule_type=nodule.type.value,
        calcified=c.calcified,
        calcification_pattern=c.calcification_pattern,
        margin=c.margin,
        location=NoduleLocation(lung=c.location.lung, zone=c.location.zone, juxtapleural=c.location.juxtapleural,
                                perifissural=c.location.perifissural),
        long_axis_mm=float(axes.long_mm) if axes is not None else float(mean_mm),
        short_axis_mm=float(axes.short_mm) if axes is not None else float(mean_mm),
        solid_component_mm=float(nodule.solid_component_mm) if part_solid and nodule.solid_component_mm else None,
        solid_long_axis_mm=float(solid.long_mm) if part_solid and solid is not None else None,
        solid_short_axis_mm=float(solid.short_mm) if part_solid and solid is not None else None,
        brock_risk=None if brock is None else float(brock),
        cyst=None if c.cyst is None else c.cyst.kind,
        airway=None if c.airway is None else c.airway.level,
        lung_rads_reasons=tuple(reasons),
        segmentation_ok=c.segmentation_ok,
        note=note,
    )
