"""The characterisation evaluation on crops: `characterize_eval`'s figures for 1500 phantom nodules in minutes.

`characterize_eval` draws each phantom, paints each nodule twice for its truth and characterises it; on the 390
full-size and 150 small phantoms of the sets below that takes over an hour here, nearly all of it drawing and
painting. `build` does that once and keeps, per nodule >= `--min-diameter`, a crop of the image and of the whole
phantom's lung mask around its painted centre (CROP_HALF_FACTOR x its drawn diameter + CROP_MARGIN_MM each side,
wider than anything the characterisation looks at) with its truth (`characterize_eval.painted_nodules`). `run`
characterises every crop at its painted centre with its drawn diameter, in parallel, and reports as
`characterize_eval` does, per set; `compare` lists the nodules two runs read differently. A run's volumes, types,
margins and calcification equal `characterize_eval`'s (tests/inference/test_characterize_crops.py); its location
(side, zone) does not, as a crop shows only part of the lungs.

    python -m inference.training.characterize_crops build [--sets tuning fresh small] [--crops DIR] [--jobs 2]
    python -m inference.training.characterize_crops run --out run.json [--noise-hu 70] [--crops DIR] [--jobs 2]
    python -m inference.training.characterize_crops compare before.json after.json

The sets (nodules >= 6 mm): tuning, full size, the seeds the rules were tuned on (590); fresh, full size, each read
once before it was used (446); small, 256 x 256 on 2.5-3 mm slices (471, one of them hidden by the anatomy). See
docs/characterization.md for how each was used.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from inference.characterize import characterize_nodule
from inference.phantom import phantom_and_anatomy
from inference.phantom.added_noise import raised_to
from inference.phantom.build import NOISE_SD_HU
from inference.preprocess import lung_mask
from inference.training.characterize_eval import (
    DRAWN_LUNG_MARGIN_MM, Evaluation, NoduleResult, format_report, measured, painted_nodules,
)

log = logging.getLogger(__name__)

# (first seed, count, full size) per set
SETS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "tuning": ((14000, 40, True), (15000, 40, True), (16000, 30, True), (17000, 40, True), (18000, 30, True),
               (19000, 30, True)),
    "fresh": ((20000, 20, True), (21000, 40, True), (22000, 40, True), (23000, 40, True), (24000, 40, True)),
    "small": ((7000, 50, False), (8000, 20, False), (9000, 20, False), (10000, 20, False), (12000, 40, False),
              (13000, 20, False)),
}
CROP_HALF_FACTOR = 1.25
CROP_MARGIN_MM = 15.0
TOLERANCE = 0.15  # the volume target: within 15 % of the painted volume
DEFAULT_CROPS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicomnode" / "characterize-crops"


def set_of_seed(seed: int) -> str:
    for name, ranges in SETS.items():
        if any(first <= seed < first + count for first, count, _ in ranges):
            return name
    raise ValueError(f"seed {seed} is in none of the sets {sorted(SETS)}")


def _seeds(sets: Iterable[str]) -> list[tuple[int, bool]]:
    return [(seed, full) for name in sets for first, count, full in SETS[name] for seed in range(first, first + count)]


def crop_name(seed: int, index: int) -> str:
    return f"{seed}_{index}.npz"


def build_seed(seed: int, full_size: bool, crops: Path, min_diameter_mm: float) -> int:
    """Write the crops of phantom `seed`'s nodules >= min_diameter_mm into `crops`; returns how many."""
    phantom, anatomy, drawn = phantom_and_anatomy(seed, small=not full_size, margin_mm=DRAWN_LUNG_MARGIN_MM)
    mask = lung_mask(phantom.hu, phantom.spacing)
    spacing = np.asarray(phantom.spacing, float)
    written = 0
    for p in painted_nodules(seed, phantom, anatomy, drawn, min_diameter_mm, drawn_for_all=True):
        half = np.ceil((CROP_HALF_FACTOR * p.drawn_diameter_mm + CROP_MARGIN_MM) / spacing).astype(int)
        centre = np.round(p.centre_zyx).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, phantom.hu.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        target = crops / crop_name(seed, p.unmeasured.index)
        partial = target.with_suffix(".partial.npz")
        np.savez_compressed(partial, hu=phantom.hu[box], lung=mask[box], centre=p.centre_zyx - lo, spacing=spacing,
                            direction=np.asarray(phantom.direction, float), drawn_diameter_mm=p.drawn_diameter_mm,
                            truth=json.dumps(asdict(p.unmeasured)))
        partial.replace(target)  # a crop is there whole or not at all: `build` resumes after an interruption
        written += 1
    return written


def _build_one(args: tuple[int, bool, Path, float]) -> tuple[int, int]:
    return args[0], build_seed(*args)


def build(sets: Sequence[str], crops: Path, jobs: int, min_diameter_mm: float) -> int:
    """Crops of every set's nodules; seeds whose crops are all there are skipped (a `done` marker per seed)."""
    crops.mkdir(parents=True, exist_ok=True)
    todo = [(seed, full, crops, min_diameter_mm) for seed, full in _seeds(sets) if not (crops / f"{seed}.done").exists()]
    log.info("building the crops of %d seeds in %s", len(todo), crops)
    total = 0
    for done, (seed, written) in enumerate(_parallel(_build_one, todo, jobs), 1):
        (crops / f"{seed}.done").write_text(str(written))
        total += written
        log.info("seed %d: %d crops (%d of %d seeds)", seed, written, done, len(todo))
    return total


def measure_crop(path: Path, noise_hu: float = 0.0) -> NoduleResult:
    """Characterise the crop at `path` at its painted centre with its drawn diameter, as `characterize_eval` does."""
    with np.load(path) as z:
        unmeasured = NoduleResult(**json.loads(str(z["truth"])))
        spacing, centre, diameter = z["spacing"], z["centre"], float(z["drawn_diameter_mm"])
        hu = raised_to(z["hu"], noise_hu, unmeasured.seed * 100 + unmeasured.index)
        c = characterize_nodule(hu, spacing, centre, diameter, z["lung"], direction=z["direction"])
    return measured(unmeasured, c, centre, centre, spacing, diameter)


def _measure_one(args: tuple[Path, float]) -> NoduleResult:
    return measure_crop(*args)


def _parallel(work: Callable, items: list, jobs: int) -> Iterator:
    if jobs <= 1:
        yield from map(work, items)
        return
    with ProcessPoolExecutor(jobs) as pool:
        yield from pool.map(work, items, chunksize=4)


def crop_paths(crops: Path, sets: Sequence[str]) -> list[Path]:
    """The crops of `sets` in `crops`, in seed and index order."""
    paths = [p for p in crops.glob("*_*.npz") if not p.name.endswith(".partial.npz")]
    keyed = sorted((tuple(int(v) for v in p.stem.split("_")), p) for p in paths)
    return [p for (seed, _), p in keyed if set_of_seed(seed) in sets]


def run(crops: Path, sets: Sequence[str], jobs: int, noise_hu: float = 0.0) -> list[NoduleResult]:
    paths = crop_paths(crops, sets)
    if not paths:
        raise SystemExit(f"no crops of {', '.join(sets)} in {crops}: run `build` first")
    out: list[NoduleResult] = []
    started = time.monotonic()
    for r in _parallel(_measure_one, [(p, noise_hu) for p in paths], jobs):
        out.append(r)
        if len(out) % 100 == 0:
            log.info("%d of %d crops measured (%.0f s)", len(out), len(paths), time.monotonic() - started)
    return out


def summary(results: Sequence[NoduleResult], min_diameter_mm: float = 6.0) -> dict[str, dict[str, float]]:
    """Per set and for all: nodules counted, volume within TOLERANCE, type, margin, calcification and Lung-RADS category
    (as the report gives it against the painted nodule's, both by the volume thresholds; by diameter in the report,
    `format_report`) right, mean |volume error|."""
    out: dict[str, dict[str, float]] = {}
    groups = {name: [r for r in results if set_of_seed(r.seed) == name] for name in SETS}
    for name, group in [*groups.items(), ("all", list(results))]:
        ev = Evaluation(list(group), min_diameter_mm)
        if not ev.counted:
            continue
        err = np.abs(ev.volume_errors())
        out[name] = {"counted": len(ev.counted), "volume_within": int((err <= TOLERANCE).sum()),
                     **{what: int(np.trace(ev.confusion(what)))
                        for what in ("type", "margin", "calcified", "lung_rads_by_volume")},
                     "mean_abs_error_pct": round(100 * float(err.mean()), 2)}
    return out


def format_summary(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'set':<8}{'counted':>9}{'within 15%':>12}{'type':>7}{'margin':>8}{'calcified':>11}{'Lung-RADS':>11}"
             f"{'mean |err|':>12}"]
    for name, row in table.items():
        lines.append(f"{name:<8}{row['counted']:>9}{row['volume_within']:>12}{row['type']:>7}{row['margin']:>8}"
                     f"{row['calcified']:>11}{row['lung_rads_by_volume']:>11}{row['mean_abs_error_pct']:>11.2f}%")
    return "\n".join(lines)


def save(results: Sequence[NoduleResult], path: Path, noise_hu: float) -> None:
    path.write_text(json.dumps({"noise_hu": noise_hu, "results": [asdict(r) for r in results]}))


def load(path: Path) -> list[NoduleResult]:
    return [NoduleResult(**r) for r in json.loads(path.read_text())["results"]]


def compare(before: Sequence[NoduleResult], after: Sequence[NoduleResult], min_diameter_mm: float = 6.0) -> str:
    """The nodules whose volume error moved by half a point or more or whose type changed, and both summaries."""
    old = {(r.seed, r.index): r for r in Evaluation(list(before), min_diameter_mm).counted}
    lines = []
    for r in Evaluation(list(after), min_diameter_mm).counted:
        b = old.get((r.seed, r.index))
        if b is None or (abs(r.volume_error - b.volume_error) < 0.005 and r.predicted_type == b.predicted_type):
            continue
        mark = {(True, False): "  fixed", (False, True): "  broken"}.get(
            (abs(b.volume_error) > TOLERANCE, abs(r.volume_error) > TOLERANCE), "")
        lines.append(f"{r.seed}:{r.index} {r.diameter_mm:5.1f} mm {r.truth_type:>12} {r.site:>6}: "
                     f"{b.predicted_type} {b.volume_error:+.1%} -> {r.predicted_type} {r.volume_error:+.1%}{mark}")
    return "\n".join([f"{len(lines)} nodules read differently", *lines, "before:", format_summary(summary(before)),
                      "after:", format_summary(summary(after))])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "run"):
        p = sub.add_parser(name)
        p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
        p.add_argument("--crops", type=Path, default=DEFAULT_CROPS)
        p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
        p.add_argument("--min-diameter", type=float, default=6.0)
    run_parser = sub.choices["run"]
    run_parser.add_argument("--out", type=Path, help="the per-nodule results as JSON, for `compare`")
    run_parser.add_argument("--noise-hu", type=float, default=0.0,
                            help="noise added so that each crop's noise per voxel is about this (HU; the phantoms' own "
                                 f"is {NOISE_SD_HU:g}), one draw per crop, correlated as the generator's")
    run_parser.add_argument("--details", action="store_true", help="every nodule's line, as characterize_eval prints it")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.command == "build":
        print(f"{build(args.sets, args.crops, args.jobs, args.min_diameter)} crops written to {args.crops}")
    elif args.command == "run":
        results = run(args.crops, args.sets, args.jobs, args.noise_hu)
        if args.out:
            save(results, args.out, args.noise_hu)
        ev = Evaluation(results, args.min_diameter)
        print(format_report(ev, details=args.details))
        print(format_summary(summary(results, args.min_diameter)))
    else:
        print(compare(load(args.before), load(args.after)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
