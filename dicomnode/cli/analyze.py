"""`dicomnode analyze`: find lung nodules in one CT series (optionally against a prior), print or write the results."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode.cli.common import UserError, console
from dicomnode.cli.inference_setup import add_engine_args, clinical_settings, make_pipeline, progress_bar

if TYPE_CHECKING:  # the inference stack loads only when a command needs it
    from pydicom.dataset import Dataset

    from inference.compare import Comparison
    from inference.findings import SeriesResult


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "truth.json" and not p.name.startswith("."))
    if not files:
        raise UserError(f"{path}: holds no files")
    return files


def _read_datasets(files: list[Path]) -> list[Dataset]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets: list[Dataset] = []
    skipped = 0
    for f in files:
        try:
            datasets.append(pydicom.dcmread(str(f)))
        except (InvalidDicomError, OSError):
            skipped += 1
    if skipped:
        console.print(f"[yellow]skipped {skipped} file(s) that are not DICOM[/]")
    if not datasets:
        raise UserError("no DICOM files found")
    return datasets


# -- analyze ---------------------------------------------------------------------------------
def cmd_analyze(args: argparse.Namespace) -> int:
    clinical = clinical_settings(args)
    datasets = _read_datasets(_dicom_files(args.path))
    prior_datasets = _read_datasets(_dicom_files(args.prior)) if args.prior is not None else None
    pipeline = make_pipeline(args, clinical)
    with progress_bar() as bar:
        task = bar.add_task("analysing", total=None)
        result = pipeline.analyze(datasets, progress=lambda msg: bar.update(task, description=msg))
        comparison = _prior_refusal(datasets, prior_datasets) if prior_datasets is not None else None
        if prior_datasets is not None and comparison is None:
            bar.update(task, description="analysing the prior")
            prior = pipeline.analyze(prior_datasets, progress=lambda msg: bar.update(task, description=f"prior: {msg}"))
            bar.update(task, description="comparing with the prior (registration, matching, growth)")
            comparison = _compare(datasets, result, prior_datasets, prior)
    if args.json:
        document = result.to_json()
        print(json.dumps(comparison.apply_to_json(document) if comparison is not None else document, indent=2))
    else:
        _print_summary(result)
        if comparison is not None:
            _print_comparison(comparison)
    if args.out:
        from dicomnode.results import build_results
        from dicomnode.results.options import ResultOptions

        args.out.mkdir(parents=True, exist_ok=True)
        objects = build_results(datasets, result, ResultOptions())
        for ds in objects:
            path = args.out / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
        console.print(f"wrote {len(objects)} result object(s) to {args.out}")
    return 0 if result.analysed else 3


def _header(datasets: list[Dataset]) -> Dataset:
    return next((ds for ds in datasets if "SOPInstanceUID" in ds), datasets[0])


def _prior_refusal(datasets: list[Dataset], prior_datasets: list[Dataset]) -> Comparison | None:
    """No comparison when the prior is another patient's exam (or several patients' files are mixed in
    either folder): decided from the headers, before the prior is analysed or its volume loaded."""
    from inference.compare import Comparison, patient_mismatch

    for name, group in (("current", datasets), ("prior", prior_datasets)):
        ids = {str(ds.get("PatientID", "") or "").strip() for ds in group}
        if len(ids) > 1:
            return Comparison(performed=False, reason=f"no comparison: the {name} files belong to several "
                              f"patients ({', '.join(sorted(repr(i) for i in ids))})")
    prior_header = _header(prior_datasets)
    why = patient_mismatch(_header(datasets), prior_header)
    if why is None:
        return None
    return Comparison(performed=False, reason=f"no comparison: the prior is not this patient's exam ({why})",
                      prior_study_instance_uid=str(prior_header.get("StudyInstanceUID", "")) or None,
                      prior_series_instance_uid=str(prior_header.get("SeriesInstanceUID", "")) or None)


def _compare(datasets: list[Dataset], result: SeriesResult, prior_datasets: list[Dataset],
             prior: SeriesResult) -> Comparison:
    """The offline comparison with a prior series (inference.compare); the patient check comes first."""
    from inference.compare import Comparison, ExamInput, compare_exams, lung_masks
    from inference.findings import NotAnalysable
    from inference.volume import load_volume

    header, prior_header = _header(datasets), _header(prior_datasets)
    if not (result.analysed and prior.analysed):
        which = "prior" if not prior.analysed else "current"
        return Comparison(performed=False, reason=f"no comparison: the {which} exam could not be analysed",
                          prior_series_instance_uid=prior.series_instance_uid or None)
    try:
        volume, prior_volume = load_volume(datasets), load_volume(prior_datasets)
    except NotAnalysable as exc:
        return Comparison(performed=False, reason=f"no comparison: {exc}")
    return compare_exams(ExamInput(result, header, volume, lung_masks(volume)),
                         ExamInput(prior, prior_header, prior_volume, lung_masks(prior_volume)))


def _print_comparison(c: Comparison) -> None:
    if not c.performed:
        print(f"comparison: {c.reason}")
        return
    reg = c.registration
    moved = "" if reg is None else (f"; registration: shift {', '.join(f'{v:.1f}' for v in reg.transform.translation)} mm, "
                                    f"rotation {reg.transform.rotation_deg:.1f} deg")
    print(f"comparison with the prior of {c.prior_study_date or '?'} ({c.interval_days} days){moved}")
    print(f"follow-up exam: Lung-RADS {c.lung_rads}: {c.recommendation}")
    for i, fc in enumerate(c.findings, 1):
        if fc is None:
            continue
        g = fc.growth
        extra = "" if g is None else (f", volume {g.volume_change_pct:+.0f} %, diameter {g.diameter_change_mm:+.1f} mm, "
                                      f"VDT {'not growing' if g.doubling_time_days is None else f'{g.doubling_time_days:.0f} days'}")
        print(f"#{i}: {fc.status}{extra}; follow-up Lung-RADS {fc.lung_rads}")
    for j, f in c.resolved:
        print(f"resolved: prior #{j + 1} at {', '.join(f'{v:.1f}' for v in f.center_mm)} ({f.diameter_mm:.1f} mm)")


def _print_summary(result: SeriesResult) -> None:
    from rich.table import Table

    if not result.analysed:
        print(f"not analysed: {result.not_analysed_reason}")
        return
    exam = result.exam
    risk = "model score (validated weights)" if exam is not None and exam.headline == "model" else "highest Brock risk"
    print(f"verdict: {result.verdict.value} ({risk} {result.verdict_probability:.1%}); "
          f"model {result.model.name} {result.model.version} on {result.model.engine}")
    if exam is not None:
        print(f"exam: Lung-RADS {exam.lung_rads_label}: {exam.recommendation}")
        laa = "n/a" if exam.laa950_pct is None else f"{exam.laa950_pct:.1f} %"
        vol = "n/a" if exam.lung_volume_ml is None else f"{exam.lung_volume_ml:.0f} ml"
        inputs = exam.risk_inputs
        age = "missing" if inputs.age_years is None else f"{inputs.age_years:g}"
        noise = "" if exam.image_noise_hu is None else f" (image noise {exam.image_noise_hu:.0f} HU)"
        print(f"emphysema LAA-950 {laa} of {vol} lung{noise}; Brock inputs: age {age}, sex {inputs.sex or 'missing'}, "
              f"family history {inputs.family_history}, emphysema {'yes' if inputs.emphysema else 'no'}")
        if exam.coronary_calcium is not None:
            print(f"coronary calcium: {exam.coronary_calcium.words}")
        if exam.s_modifier_words:
            print(exam.s_modifier_words)
        if exam.reason:
            print(f"note: {exam.reason}")
    from inference.findings import lesion_type_words

    table = Table("#", "centre x,y,z mm", "mean diam mm", "type", "calc", "margin", "lung/zone", "Lung-RADS",
                  "Brock", "model score", "p(nodule)", "slice UID", "row,col")
    for i, f in enumerate(result.findings, 1):
        table.add_row(str(i), ", ".join(f"{c:.1f}" for c in f.center_mm), f"{f.diameter_mm:.1f}",
                      lesion_type_words(f.nodule_type, f.cyst, f.airway),
                      "yes" if f.calcified else "no", f.margin or "not assessed", f"{f.location.lung or '?'}/{f.location.zone or '?'}",
                      f.lung_rads, "n/a" if f.brock_risk is None else f"{f.brock_risk:.1%}", f"{f.model_score:.2f}",
                      f"{f.probability:.2f}", f.key_slice.sop_instance_uid[-24:],
                      f"{f.key_slice.row:.0f},{f.key_slice.column:.0f}")
    from dicomnode.cli.common import out

    out.print(table)  # 250 columns when not a terminal: the table is not squeezed into 80
    for i, f in enumerate(result.findings, 1):
        if f.note:
            print(f"#{i}: {f.note}")
    print("model score: DeepLung DPN + GBM trained on synthetic phantoms; not a clinical probability"
          if exam is None or exam.headline != "model" else "model score: weights validated on real data")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))


def add_analyze_command(sub: Any) -> None:
    p = sub.add_parser("analyze", help="find lung nodules in one CT series (a folder or file)")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, help="write the result DICOM objects (SR, overlays, SEG) here")
    p.add_argument("--config", type=Path, help="TOML config file: its [clinical] section feeds the Brock model")
    p.add_argument("--family-history", choices=("unknown", "yes", "no"),
                   help="lung cancer in a first-degree relative (default: [clinical] family_history, else unknown)")
    p.add_argument("--prior", type=Path, metavar="PRIOR_DIR",
                   help="the patient's earlier CT series (folder or file): compare with it, offline (new, growing, "
                   "stable, shrinking, resolved; doubling times; Lung-RADS follow-up categories)")
    add_engine_args(p)
    p.set_defaults(func=cmd_analyze)
