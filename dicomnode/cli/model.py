"""`dicomnode model train|froc|evaluate|calibrate|export|export-triton|info`.

Kept apart from the other command groups because these import the inference stack (torch and friends), as
`analyze` (cli/analyze.py) and `phantom` (cli/phantom.py) do.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dicomnode.cli.common import UserError, console
from dicomnode.cli.inference_setup import (
    DEFAULT_CACHE,
    add_engine_args,
    clinical_settings,
    make_pipeline,
    progress_bar,
    stage_progress,
)

if TYPE_CHECKING:  # the inference stack loads only when a command needs it
    from inference.pipeline import LungNodulePipeline
    from inference.training.evaluation import PhantomEvaluation


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
    with log_path.open("a") as log, progress_bar() as bar:
        def log_line(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        try:
            summary = run_training(cfg, classifier_epochs=args.classifier_epochs, progress=stage_progress(bar),
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
    with progress_bar() as bar:
        progress = stage_progress(bar)
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
    pipeline = make_pipeline(args, {"max_findings": clinical_settings(args)["max_findings"]})
    ev, report = _evaluate_on_phantoms(args, pipeline, pipeline.bundle.manifest.get("report_threshold_probability"))
    report["max_findings"] = pipeline.max_findings
    # characterisation (type, margin, calcification, volume) on the same held-out phantom seeds: at each nodule's
    # painted centre (the detector's diameter simulated within +-15 %), or at the centre and diameter of these
    # weights' detector candidate that hits it (--characterize-at detector: what a user gets; the candidates
    # are the FROC pass's, on the same preprocessed phantoms, not detected again)
    seeds = range(args.first_seed, args.first_seed + args.count)
    at_detector = args.characterize_at == "detector"
    with progress_bar() as bar:
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
    pipeline = make_pipeline(args)
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


def _add_phantom_evaluation_args(p: argparse.ArgumentParser, *, count: int, first_seed: int, role: str) -> None:
    """What `_evaluate_on_phantoms` reads: the engine, which phantoms, and the operating point's FP budget."""
    add_engine_args(p)
    p.add_argument("--count", type=int, default=count)
    p.add_argument("--first-seed", type=int, default=first_seed, help=f"{role} phantom seeds start here")
    p.add_argument("--full-size", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-fps", type=float, default=1.0, help="false positives per scan of the operating point")


def add_model_commands(sub: Any) -> None:
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
                        "margin, calcification and per-nodule Lung-RADS confusion matrices, volume error) on "
                        "held-out phantoms")
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
