"""What the commands that run the inference stack share: the engine flags, the [clinical] settings, the pipeline
built from both, and progress bars."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dicomnode.cli.common import UserError, console

if TYPE_CHECKING:  # the inference stack loads only when a command needs it
    from inference.pipeline import LungNodulePipeline

ENGINES = ("auto", "torch", "onnxruntime", "tensorrt")
DEFAULT_CACHE = Path.home() / ".cache" / "dicomnode"


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def stage_progress(bar: Progress) -> Callable[[str, int, int], None]:
    """A (stage, done, total) callback that keeps one bar per stage."""
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return update


def clinical_settings(args: argparse.Namespace) -> dict[str, Any]:
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


def make_pipeline(args: argparse.Namespace, clinical: dict[str, Any] | None = None) -> LungNodulePipeline:
    from inference.engines import EngineUnavailable
    from inference.nets.checkpoint import CheckpointError
    from inference.pipeline import LungNodulePipeline
    from inference.weights_bundle import WeightsError

    try:
        return LungNodulePipeline(engine=args.engine, mode=args.mode, threads=args.threads, weights=args.weights,
                                  cache_dir=args.cache_dir, **(clinical or {}))
    except (WeightsError, EngineUnavailable, CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None


# -- parser ----------------------------------------------------------------------------------
def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="auto", help="inference engine (default: auto)")
    p.add_argument("--mode", choices=("whole", "tiled"), default="whole",
                   help="whole lung box in one pass, or DeepLung's 208^3 tiles")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: engine default)")
    p.add_argument("--weights", type=Path, help="weights folder with manifest.json (default: the packaged demo weights)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="ONNX/TensorRT and data cache")
