"""`dicomnode analyze`, `dicomnode model train|froc|evaluate|calibrate|export|export-triton|info` and `dicomnode phantom`.

Kept apart from the other command groups because these import the inference stack (torch and friends).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dicomnode.cli.common import UserError, console

if TYPE_CHECKING:  # the inference stack loads only when a command needs it
    from pydicom.dataset import Dataset

    from inference.pipeline import LungNodulePipeline
    from inference.compare import Comparison
    from inference.findings import SeriesResult
    from inference.training.evaluation import PhantomEvaluation

ENGINES = ("auto", "torch", "onnxruntime", "tensorrt")
DEFAULT_CACHE = Path.home() / ".cache" / "dicomnode"


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _stage_progress(bar: Progress) -> Callable[[str, int, int], None]:
    """A (stage, done, total) callback that keeps one bar per stage."""
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return update


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


def _clinical(args: argparse.Namespace) -> dict[str, Any]:
    """[clinical] settings (the Brock model's inputs, how many findings are reported): the config file (and
    DICOMNODE_CLINICAL__* env), then the flag."""
    from dicomnode.config import ConfigError, load_settings

    overrides = {"clinical.family_history": args.family_history} if getattr(args, "family_history", None) else {}
    try:
        settings = load_settings(getattr(args, "config", None), overrides,
                                 {"clinical.family_history": "flag --family-history"})
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return {"family_history": settings.clinical.family_history,
            "emphysema_laa950_pct": settings.clinical.emphysema_laa950_pct,
            "max_findings": settings.clinical.max_findings}


def _pipeline(args: argparse.Namespace, clinical: dict[str, Any] | None = None) -> LungNodulePipeline:
    from inference.engines import EngineUnavailable
    from inference.nets.checkpoint import CheckpointError
    from inference.pipeline import LungNodulePipeline
    from inference.weights_bundle import WeightsError

    try:
        return LungNodulePipeline(engine=args.engine, mode=args.mode, threads=args.threads, weights=args.weights,
                                  cache_dir=args.cache_dir, **(clinical or {}))
    except (WeightsError, EngineUnavailable, CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None


# -- analyze ---------------------------------------------------------------------------------
def cmd_analyze(args: argparse.Namespace) -> int:
    clinical = _clinical(args)
    datasets = _read_datasets(_dicom_files(args.path))
    prior_datasets = _read_datasets(_dicom_files(args.prior)) if args.prior is not None else None
    pipeline = _pipeline(args, clinical)
    with _bar() as bar:
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
        print(f"exam: Lung-RADS {exam.lung_rads}: {exam.recommendation}")
        laa = "n/a" if exam.laa950_pct is None else f"{exam.laa950_pct:.1f} %"
        vol = "n/a" if exam.lung_volume_ml is None else f"{exam.lung_volume_ml:.0f} ml"
        inputs = exam.risk_inputs
        age = "missing" if inputs.age_years is None else f"{inputs.age_years:g}"
        noise = "" if exam.image_noise_hu is None else f" (image noise {exam.image_noise_hu:.0f} HU)"
        print(f"emphysema LAA-950 {laa} of {vol} lung{noise}; Brock inputs: age {age}, sex {inputs.sex or 'missing'}, "
              f"family history {inputs.family_history}, emphysema {'yes' if inputs.emphysema else 'no'}")
        if exam.reason:
            print(f"note: {exam.reason}")
    table = Table("#", "centre x,y,z mm", "mean diam mm", "type", "calc", "margin", "lung/zone", "Lung-RADS",
                  "Brock", "model score", "p(nodule)", "slice UID", "row,col")
    for i, f in enumerate(result.findings, 1):
        table.add_row(str(i), ", ".join(f"{c:.1f}" for c in f.center_mm), f"{f.diameter_mm:.1f}", f.nodule_type,
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


# -- phantom ---------------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from inference.phantom import write_phantom_series

    if args.count < 1:
        raise UserError("--count must be 1 or more")
    if args.follow_up_of is not None:
        return _phantom_follow_up(args)
    if args.months is not None:
        raise UserError("--months needs --follow-up-of PRIOR_SEED")
    with _bar() as bar:
        task = bar.add_task("writing phantoms", total=args.count)
        for i in range(args.count):
            seed = args.seed + i
            out = args.out if args.count == 1 else args.out / f"phantom-{seed}"
            case = write_phantom_series(out, seed, small=args.small)
            bar.advance(task)
            sizes = ", ".join(f"{n.diameter_mm:.1f} mm" for n in case.phantom.nodules)
            console.print(f"{out}: {len(case.files)} slices, nodules {sizes or 'none'}; truth in {case.truth_path.name}")
    return 0


def _phantom_follow_up(args: argparse.Namespace) -> int:
    from inference.phantom.follow_up import write_follow_up_series

    if args.count != 1:
        raise UserError("--follow-up-of writes one series: --count must be 1")
    if args.months is None or not 0 < args.months <= 60:
        raise UserError("--follow-up-of needs --months M (0 < M <= 60)")
    if args.seed == args.follow_up_of:
        raise UserError("--seed must differ from --follow-up-of (the follow-up's own seed draws its motion and noise)")
    with _bar() as bar:
        bar.add_task(f"writing the follow-up of phantom {args.follow_up_of}", total=None)
        case = write_follow_up_series(args.out, args.seed, args.follow_up_of, args.months, small=args.small)
    truth = json.loads(case.truth_path.read_text())
    counts = {s: sum(n["status"] == s for n in truth["nodules"]) for s in ("growing", "stable", "resolved", "new")}
    console.print(f"{args.out}: {len(case.files)} slices, follow-up of phantom {args.follow_up_of} after "
                  f"{truth['interval_days']} days: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                  + f"; truth in {case.truth_path.name}")
    return 0


# -- model -----------------------------------------------------------------------------------
def _seed_range(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:STOP (e.g. 1000:1028), got {text!r}") from None
    if b <= a:
        raise argparse.ArgumentTypeError(f"empty seed range {text!r}")
    return a, b


def cmd_model_train(args: argparse.Namespace) -> int:
    from inference.training.crops import HARDNESS_KINDS, check_hardness_kinds
    from inference.training.detector import TrainConfig
    from inference.training.luna16 import MissingPackage
    from inference.training.run import run_training

    luna = None if args.data == "phantoms" else Path(args.data)
    if luna is not None and not luna.is_dir():
        raise UserError(f"--data {args.data}: expected 'phantoms' or a LUNA16 folder")
    if args.init is not None and not args.init.is_file():
        raise UserError(f"--init {args.init}: no such checkpoint file")
    try:
        hard_kinds = check_hardness_kinds(args.hard_kinds or HARDNESS_KINDS)
    except ValueError as exc:
        raise UserError(f"--hard-kinds: {exc}") from None
    cfg = TrainConfig(
        out_dir=args.out, cache_dir=args.cache_dir / "train", seed=args.seed, train_seeds=args.seeds, small=not args.full_size,
        luna16=luna, crop=args.crop, batch=args.batch, steps=args.steps, lr=args.lr,
        checkpoint_every=args.checkpoint_every, threads=args.threads or 2, workers=args.workers, init=args.init,
        warmup_steps=args.warmup_steps, p_positive=args.p_positive, hard_boost=args.hard_boost,
        hard_kinds=hard_kinds,
    )
    log_path = args.out / "train-log.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log, _bar() as bar:
        def log_line(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        try:
            summary = run_training(cfg, classifier_epochs=args.classifier_epochs, progress=_stage_progress(bar),
                                   log_fn=log_line)
        except (MissingPackage, FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None
    print(json.dumps(summary, indent=2))
    return 0


def cmd_model_froc(args: argparse.Namespace) -> int:
    from inference.training.metrics import format_froc_report, froc

    for name in ("annotations", "excluded", "seriesuids", "candidates"):
        if not getattr(args, name).is_file():
            raise UserError(f"--{name} {getattr(args, name)}: no such file")
    try:
        result = froc(args.annotations, args.excluded, args.seriesuids, args.candidates)
    except (KeyError, ValueError) as exc:
        raise UserError(f"cannot evaluate: {exc}") from None
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)
        console.print(f"FROC plot: {result.plot_png(args.png / 'froc.png')}")
    print(format_froc_report(result))
    return 0


def _evaluate_on_phantoms(args: argparse.Namespace, pipeline: LungNodulePipeline,
                          report_threshold: float | None) -> tuple[PhantomEvaluation, dict[str, Any]]:
    """Detection FROC and malignancy ROC of `pipeline` on phantoms first_seed..first_seed+count-1."""
    from inference.training.cases import Case, cached_phantom_cases
    from inference.training.evaluation import evaluate_detector_on_cases

    seeds = list(range(args.first_seed, args.first_seed + args.count))
    with _bar() as bar:
        progress = _stage_progress(bar)
        paths = cached_phantom_cases(seeds, args.cache_dir / "eval", small=not args.full_size, progress=progress,
                                     workers=args.workers)
        cases = [Case.load(p) for p in paths]
        ev = evaluate_detector_on_cases(pipeline.detector, cases, mode=args.mode, classifier=pipeline.classifier,
                                        progress=progress, report_threshold=report_threshold,
                                        max_findings=pipeline.max_findings,
                                        max_fps_per_scan=args.max_fps)
    report = {"weights": str(pipeline.bundle.directory), "version": pipeline.bundle.version,
              "engine": pipeline.detector.name, "phantom_seeds": [seeds[0], seeds[-1]], **ev.to_json()}
    return ev, report


def cmd_model_evaluate(args: argparse.Namespace) -> int:
    from inference.training.characterize_eval import evaluate as evaluate_characterization
    from inference.training.characterize_eval import format_report
    from inference.training.evaluation import plot_confusion_png

    # the site's [clinical] max_findings: the report threshold is scored on the findings this node would report
    pipeline = _pipeline(args, {"max_findings": _clinical(args)["max_findings"]})
    ev, report = _evaluate_on_phantoms(args, pipeline, pipeline.bundle.manifest.get("report_threshold_probability"))
    report["max_findings"] = pipeline.max_findings
    # characterisation (type, margin, calcification, volume) on the same held-out phantom seeds: at each nodule's
    # painted centre (the detector's diameter simulated within +-15 %), or at the centre and diameter of these
    # weights' detector candidate that hits it (--characterize-at detector: what a user gets; the candidates
    # are the FROC pass's, on the same preprocessed phantoms, not detected again)
    seeds = range(args.first_seed, args.first_seed + args.count)
    at_detector = args.characterize_at == "detector"
    with _bar() as bar:
        bar.add_task("characterising nodules on the held-out phantoms", total=None)
        chars = evaluate_characterization(seeds, 6.0, small=not args.full_size,
                                          detector=pipeline.detector if at_detector else None, mode=pipeline.mode,
                                          marks=dict(zip(seeds, ev.marks)) if at_detector else None)
    report["characterization"] = chars.to_json()
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)
        report["png"] = [str(ev.froc_6mm.plot_png(args.png / "froc-6mm.png")),
                         str(ev.froc_all.plot_png(args.png / "froc-all.png"))]
        if ev.malignancy_roc is not None:
            report["png"].append(str(ev.malignancy_roc.plot_png(args.png / "malignancy-roc.png", "malignancy ROC")))
            report["png"].append(str(plot_confusion_png(ev.malignancy_roc.confusion, args.png / "malignancy-confusion.png")))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_evaluation(report)
    print("characterisation (nodules >= 6 mm, truth = the painted phantom nodules):")
    print(format_report(chars, details=False))
    return 0


def _print_evaluation(report: dict[str, Any]) -> None:
    auc = report.get("malignancy_auc")
    print(f"weights {report['weights']} {report['version']} on {report['engine']}; "
          f"held-out phantoms {report['phantom_seeds'][0]}..{report['phantom_seeds'][1]}")
    print(f"detection: {report['n_nodules_6mm']} nodules >= 6 mm in {report['n_scans']} scans; sensitivity "
          f"{report['sensitivity_6mm_at_1fp_per_scan']:.3f} at <= 1 FP/scan; CPM {report['cpm_6mm']:.3f}")
    if report.get("report_threshold_probability") is not None:
        print(f"at the report threshold {report['report_threshold_probability']}: sensitivity "
              f"{report['sensitivity_6mm_at_report_threshold']} with {report['fps_per_scan_at_report_threshold']} FPs/scan")
        print(f"  scored on the findings a node reports: one per lesion, at most {report['max_findings']} per "
              "series ([clinical] max_findings)")
    print("model score (synthetic-data malignancy head): AUC " + ("n/a" if auc is None else f"{auc:.3f}"))
    for name in report.get("png", []):
        print(f"plot: {name}")


def cmd_model_calibrate(args: argparse.Namespace) -> int:
    """Pick the report threshold on calibration phantoms (not the held-out ones) and optionally store it."""
    pipeline = _pipeline(args)
    ev, report = _evaluate_on_phantoms(args, pipeline, None)
    threshold = ev.threshold_6mm_at_1fp
    if not math.isfinite(threshold) or ev.sensitivity_6mm_at_1fp == 0:
        raise UserError(f"no operating point with <= {args.max_fps:g} FP/scan finds any nodule >= 6 mm on these "
                        "phantoms: the weights need more training; nothing was written")
    # rounded down, so the calibration's last accepted mark stays above the stored threshold
    threshold = math.floor(float(threshold) * 1e5) / 1e5
    calibration = {"report_threshold_probability": threshold, "max_fps_per_scan": args.max_fps,
                   "sensitivity_6mm": report["sensitivity_6mm_at_1fp_per_scan"],
                   "phantom_seeds": report["phantom_seeds"]}
    if args.write:
        from inference.weights_bundle import write_manifest

        manifest = {**pipeline.bundle.manifest, "report_threshold_probability": threshold, "calibration": calibration}
        calibration["written_to"] = str(write_manifest(pipeline.bundle.directory, manifest))
    print(json.dumps(calibration, indent=2))
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from inference.export import check_tensorrt_onnx_support, export_onnx
    from inference.nets.checkpoint import load_into
    from inference.nets.classifier import DPNClassifierNet
    from inference.nets.dpn3d import DPN26Detector
    from inference.weights_bundle import WeightsError, load_weights_bundle

    try:
        bundle = load_weights_bundle(args.weights)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Literal["detector", "classifier"], Path]] = []
    detector = DPN26Detector()
    load_into(detector, bundle.detector)
    written.append(("detector", export_onnx(detector.eval(), args.out / "detector.onnx", kind="detector")))
    if bundle.classifier_net is not None:
        net = DPNClassifierNet()
        load_into(net, bundle.classifier_net)
        written.append(("classifier", export_onnx(net.eval(), args.out / "classifier.onnx", kind="classifier")))
    for kind, path in written:
        problems = check_tensorrt_onnx_support(path)
        note = "TensorRT pre-flight ok" if not problems else "TensorRT pre-flight: " + "; ".join(problems)
        print(f"{kind}: {path} ({note})")
    reason = _tensorrt_skip_reason()
    if reason:
        print(f"TensorRT engine: skipped ({reason})")
    else:
        from inference.engines import make_engine

        for kind, path in written:
            make_engine("tensorrt", network=kind, onnx_path=path, cache_dir=args.out,
                        weights_sha256=bundle.sha256("detector" if kind == "detector" else "classifier_net"))
            print(f"TensorRT engine for {kind}: built into {args.out}")
    return 0


def cmd_model_export_triton(args: argparse.Namespace) -> int:
    """A Triton model repository: per network config.pbtxt + 1/model.onnx (+ model.py for the Python
    backend), and a TensorRT plan model where TensorRT and a GPU are here."""
    import tempfile

    from inference.export import export_onnx
    from inference.export_triton import write_model, write_tensorrt_model
    from inference.nets.checkpoint import load_into
    from inference.nets.classifier import DPNClassifierNet
    from inference.nets.dpn3d import DPN26Detector
    from inference.weights_bundle import WeightsError, load_weights_bundle

    try:
        bundle = load_weights_bundle(args.weights)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    args.dir.mkdir(parents=True, exist_ok=True)
    reason = _tensorrt_skip_reason()
    with tempfile.TemporaryDirectory(prefix="dicomnode-export-") as tmp:
        nets: list[tuple[Literal["detector", "classifier"], Path]] = []
        detector = DPN26Detector()
        load_into(detector, bundle.detector)
        nets.append(("detector", export_onnx(detector.eval(), Path(tmp) / "detector.onnx", kind="detector")))
        if bundle.classifier_net is not None:
            net = DPNClassifierNet()
            load_into(net, bundle.classifier_net)
            nets.append(("classifier", export_onnx(net.eval(), Path(tmp) / "classifier.onnx", kind="classifier")))
        for kind, onnx_path in nets:
            model = write_model(args.dir, kind, onnx_path, bundle, backend=args.backend)
            print(f"{model.name}: {model.directory} (backend {model.backend}, weights sha256 {model.weights_sha256})")
            if reason is None:
                trt_model = write_tensorrt_model(args.dir, kind, onnx_path, bundle, cache_dir=Path(tmp) / "trt")
                print(f"{trt_model.name}: {trt_model.directory} (TensorRT plan for this GPU)")
    if reason:
        print(f"TensorRT plan: skipped ({reason})")
    return 0


def _tensorrt_skip_reason() -> str | None:
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def cmd_model_info(args: argparse.Namespace) -> int:
    from inference.engines import resolve_kind
    from inference.weights_bundle import WeightsError, load_weights_bundle

    try:
        bundle = load_weights_bundle(args.weights)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    m = bundle.manifest
    print(f"model    {m.get('name')} {bundle.version}")
    print(f"weights  {bundle.directory}")
    for role, entry in m["files"].items():
        print(f"  {role:15s} {entry['path']}  sha256 {entry['sha256']}")
    print(f"engine   auto -> {resolve_kind('auto')}")
    threshold = m.get("report_threshold_probability")
    print(f"report   detection probability > {threshold}" if threshold is not None else "report   logit > -2")
    for key in ("trained", "figures", "figures_second_held_out_set"):
        if key in m:
            print(f"{key:8s} {json.dumps(m[key])}")
    print(m.get("warning", "NOT FOR CLINICAL USE"))
    card = bundle.directory / "MODEL_CARD.md"
    if card.is_file():
        print(f"model card: {card}")
    return 0


# -- parser ----------------------------------------------------------------------------------
def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="auto", help="inference engine (default: auto)")
    p.add_argument("--mode", choices=("whole", "tiled"), default="whole",
                   help="whole lung box in one pass, or DeepLung's 208^3 tiles")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: engine default)")
    p.add_argument("--weights", type=Path, help="weights folder with manifest.json (default: the packaged demo weights)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="ONNX/TensorRT and data cache")


def _add_phantom_evaluation_args(p: argparse.ArgumentParser, *, count: int, first_seed: int, role: str) -> None:
    """What `_evaluate_on_phantoms` reads: the engine, which phantoms, and the operating point's FP budget."""
    _add_engine_args(p)
    p.add_argument("--count", type=int, default=count)
    p.add_argument("--first-seed", type=int, default=first_seed, help=f"{role} phantom seeds start here")
    p.add_argument("--full-size", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-fps", type=float, default=1.0, help="false positives per scan of the operating point")


def add_model_commands(sub: Any) -> None:
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
    _add_engine_args(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("phantom", help="write synthetic chest CT series with known nodules (truth.json)")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=1, help="several phantoms go to OUT/phantom-SEED")
    p.add_argument("--small", action="store_true", help="256x256, thick slices: quick to write and analyse")
    p.add_argument("--follow-up-of", type=int, metavar="PRIOR_SEED",
                   help="write the follow-up of phantom PRIOR_SEED (same patient, moved on the table, another field of "
                   "view; nodules grown, stable, resolved and one new; truth.json); pass the prior's --small too")
    p.add_argument("--months", type=float, help="with --follow-up-of: months after the prior")
    p.set_defaults(func=cmd_phantom)

    model = sub.add_parser("model", help="train, evaluate, export or describe the model")
    msub = model.add_subparsers(dest="model_command", required=True)

    p = msub.add_parser("train", help="train detector and malignancy stage (phantoms or a LUNA16 folder)")
    p.add_argument("--data", default="phantoms", help="'phantoms' or a LUNA16 folder (subset*/*.mhd + annotations.csv)")
    p.add_argument("--out", type=Path, default=Path("train-out"))
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--seeds", type=_seed_range, default=(1000, 1080), help="phantom seeds FIRST:STOP")
    p.add_argument("--full-size", action="store_true", help="512x512 phantoms instead of small ones")
    p.add_argument("--seed", type=int, default=0, help="training seed (crops, init, order)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--crop", type=int, default=48, help="crop side (multiple of 16)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--p-positive", type=float, default=0.7, help="share of crops centred near a nodule")
    p.add_argument("--hard-boost", type=float, default=0.0,
                   help="draw faint (ground-glass-like), small and vessel- or pleura-attached nodules 1 + N times as often per hardness point")
    p.add_argument("--hard-kinds", type=lambda text: tuple(v.strip() for v in text.split(",") if v.strip()),
                   metavar="KIND,...", help="what earns a hardness point: faint, small, touching "
                   "(default: all three; stage 3 of the demo weights used faint,small)")
    p.add_argument("--init", type=Path, help="continue from this detector checkpoint (fine-tuning)")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--classifier-epochs", type=int, default=0,
                   help="train DPNClassifierNet features this many epochs first (0: GBM on pixels + diameter)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="processes building the phantom cache")
    p.set_defaults(func=cmd_model_train)

    p = msub.add_parser("froc", help="LUNA16 FROC/CPM of a candidate list")
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--excluded", type=Path, required=True)
    p.add_argument("--seriesuids", type=Path, required=True)
    p.add_argument("--candidates", type=Path, required=True)
    p.add_argument("--png", type=Path, help="write froc.png into this folder")
    p.set_defaults(func=cmd_model_froc)

    p = msub.add_parser("evaluate", help="detection FROC, model-score ROC and nodule characterisation (type, "
                        "margin, calcification confusion matrices, volume error) on held-out phantoms")
    _add_phantom_evaluation_args(p, count=20, first_seed=9000, role="held-out")
    p.add_argument("--config", type=Path, help="TOML config file: its [clinical] max_findings sets how many findings "
                   "per series the report threshold is scored on (default: 10)")
    p.add_argument("--png", type=Path, help="write FROC, ROC and confusion-matrix PNGs here")
    p.add_argument("--json", action="store_true", help="print the figures (detection and characterisation) as JSON")
    p.add_argument("--characterize-at", choices=("truth", "detector"), default="truth",
                   help="characterise each nodule at its painted centre with a simulated diameter (default), or at "
                        "the centre and diameter of the detector's candidate that hits it")
    p.set_defaults(func=cmd_model_evaluate)

    p = msub.add_parser("calibrate", help="report threshold at <= N FP/scan on calibration phantoms (not held-out)")
    _add_phantom_evaluation_args(p, count=10, first_seed=8000, role="calibration")
    p.add_argument("--write", action="store_true", help="store the threshold in the weights' manifest.json")
    p.set_defaults(func=cmd_model_calibrate)

    p = msub.add_parser("export", help="ONNX of detector and classifier (+ TensorRT engines where possible)")
    p.add_argument("--out", type=Path, default=Path("export"))
    p.add_argument("--weights", type=Path)
    p.set_defaults(func=cmd_model_export)

    p = msub.add_parser("export-triton", help="a Triton Inference Server model repository for the weights")
    p.add_argument("dir", type=Path, help="the model repository folder (tritonserver --model-repository DIR)")
    p.add_argument("--weights", type=Path)
    p.add_argument("--backend", choices=("onnxruntime", "python"), default="onnxruntime",
                   help="Triton's onnxruntime backend, or its Python backend running ONNX Runtime (default: onnxruntime)")
    p.set_defaults(func=cmd_model_export_triton)

    p = msub.add_parser("info", help="model card, weights hashes, engine choice")
    p.add_argument("--weights", type=Path)
    p.set_defaults(func=cmd_model_info)

