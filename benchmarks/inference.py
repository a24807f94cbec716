"""Inference speed and memory on the real LIDC-IDRI-0002 series (261 slices, 512x512, 1.25 mm).

Each configuration (engine x detection mode) runs in its own child process, so peak memory
(ru_maxrss) belongs to that configuration alone. Engines are built (and ONNX exported into the
cache) before the clock starts: the node keeps one pipeline, so per-series time is what counts.
Prints per-stage timings, wall time, peak memory, and ratios against torch-tiled measured in the
same run (absolute seconds are noise on a shared 2-core machine). Target: whole pipeline < 60 s
and < 6 GB.

Then the node itself (`--node`, on by default; `--no-node` skips it): `dicomnode serve` with its defaults
(the built-in lung-nodule route, [inference] as configured by default), the series sent with dcmtk
`storescu`, and the peak memory of the whole node process while it receives and analyses it: VmHWM of
the node's process from /proc and the largest sum of resident memory over it and its child processes,
sampled every 0.1 s. Issue 16's target: <= 3 GB for lidc-idri-0002.

    python benchmarks/inference.py [--configs onnxruntime:whole,torch:tiled] [--series DIR] [--threads 2] [--no-node]

`--ab N` (issue 16, "no loss of speed"): the onnxruntime detector on the series' preprocessed lung box,
the one-pass graph (A) and the slabbed engine at `[inference] detector_memory_mb` (B) built in one process
and run interleaved A B A B ... N times each: the median of each, the ratio slabbed/whole of wall and of
CPU seconds (on a shared machine the CPU ratio is the steadier), and the largest absolute difference of
their outputs; then each alone in a fresh process for its peak memory (ru_maxrss), after the same preprocessing.

    python benchmarks/inference.py --ab 3 [--series DIR] [--threads 2] [--memory-mb 512]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_SERIES = ROOT.parent / "shared" / "data" / "lidc-idri-0002" / "series"
BASELINE = "torch:tiled"


def _child(engine: str, mode: str, series: Path, threads: int, cache_dir: Path, weights: str | None) -> dict:
    from inference.pipeline import LungNodulePipeline
    from inference.volume import read_series

    t = time.perf_counter()
    pipeline = LungNodulePipeline(engine=engine, mode=mode, threads=threads, weights=weights, cache_dir=cache_dir)
    init_s = time.perf_counter() - t
    datasets = read_series(sorted(str(p) for p in series.iterdir() if p.is_file()))
    t = time.perf_counter()
    result = pipeline.analyze(datasets)
    wall = time.perf_counter() - t
    return {
        "config": f"{engine}:{mode}",
        "engine": result.model.engine,
        "init_s": init_s,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "timings_s": result.timings_s,
        "verdict": result.verdict.value,
        "exam": result.exam.to_json() if result.exam is not None else None,
        "findings": [f.to_json() for f in result.findings],
    }


def _detector_engine(memory_mb: int | None, threads: int, cache_dir: Path, weights: str | None) -> Any:
    """The pipeline's onnxruntime detector: the one-pass graph (`memory_mb` None) or the slabbed engine."""
    from inference.engines import make_engine
    from inference.nets.checkpoint import load_into
    from inference.nets.dpn3d import DPN26Detector
    from inference.pipeline import load_weights_bundle

    bundle = load_weights_bundle(weights)
    detector = DPN26Detector()
    load_into(detector, bundle.detector)
    detector.eval()
    return make_engine("onnxruntime", network="detector", model=detector, weights_sha256=bundle.sha256("detector"),
                       threads=threads, cache_dir=cache_dir, slab_memory_mb=memory_mb)


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _ab_child(image_npy: Path, runs: int, memory_mb: int, threads: int, cache_dir: Path, weights: str | None) -> dict:
    """Whole (A) and slabbed (B) detector passes interleaved A B A B ... in this one process."""
    import numpy as np

    from inference.detect import run_detector

    image = np.load(image_npy)
    engines = {"whole": _detector_engine(None, threads, cache_dir, weights),
               "slabbed": _detector_engine(memory_mb, threads, cache_dir, weights)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in engines}
    outputs: dict[str, Any] = {}
    for engine in engines.values():  # a first, uncounted pass each: an engine's first run also sets up its memory
        run_detector(engine, image, "whole")
    for _ in range(runs):
        for name, engine in engines.items():
            wall, cpu = time.perf_counter(), _cpu_s()
            outputs[name] = run_detector(engine, image, "whole")
            times[name].append((time.perf_counter() - wall, _cpu_s() - cpu))
    diff = float(np.abs(outputs["whole"] - outputs["slabbed"]).max())
    return {"times": times, "max_abs_diff": diff, "engine": engines["slabbed"].engine.__class__.__name__}


def _peak_child(image_npy: Path, memory_mb: int | None, threads: int, cache_dir: Path, weights: str | None) -> dict:
    """One detector pass in this fresh process: its peak resident memory, and the process's before it."""
    import numpy as np

    from inference.detect import run_detector

    image = np.load(image_npy)
    engine = _detector_engine(memory_mb, threads, cache_dir, weights)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    run_detector(engine, image, "whole")
    return {"before_mb": before, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1 : len(xs) // 2 + 1]) / 2


def ab(series: Path, runs: int, memory_mb: int, threads: int, cache_dir: Path, weights: str | None) -> int:
    """Issue 16's speed check: slabbed vs one-pass detector on the same volume; prints ratios and peaks."""
    from inference.preprocess import preprocess
    from inference.volume import load_volume, read_series

    import numpy as np

    cache_dir.mkdir(parents=True, exist_ok=True)
    _detector_engine(memory_mb, threads, cache_dir, weights)  # export both graphs before any clock starts
    _detector_engine(None, threads, cache_dir, weights)
    with tempfile.TemporaryDirectory(prefix="inference-ab-") as tmp:
        image_npy = Path(tmp) / "image.npy"
        datasets = read_series(sorted(str(p) for p in series.iterdir() if p.is_file()))
        np.save(image_npy, preprocess(load_volume(datasets)).image)
        del datasets
        base = [sys.executable, __file__, "--image", str(image_npy), "--threads", str(threads),
                "--cache-dir", str(cache_dir), "--memory-mb", str(memory_mb)] + (["--weights", weights] if weights else [])

        def child(*extra: str) -> dict:
            proc = subprocess.run(base + list(extra), capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
            return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

        r = child("--child", "ab", "--ab", str(runs))
        peaks = {name: child("--child", f"peak:{name}") for name in ("whole", "slabbed")}
    med = {k: (_median([w for w, _ in v]), _median([c for _, c in v])) for k, v in r["times"].items()}
    for k, v in r["times"].items():
        print(f"{k:8s} wall " + " ".join(f"{w:.2f}" for w, _ in v) + "  cpu " + " ".join(f"{c:.2f}" for _, c in v)
              + f"  (median wall {med[k][0]:.2f} s, cpu {med[k][1]:.2f} s); peak {peaks[k]['peak_mb'] / 1024:.2f} GB"
              + f" (process {peaks[k]['before_mb'] / 1024:.2f} GB before the pass)")
    ratio_wall, ratio_cpu = med["slabbed"][0] / med["whole"][0], med["slabbed"][1] / med["whole"][1]
    print(f"slabbed ({r['engine']}, detector_memory_mb {memory_mb}) / whole, {runs} interleaved runs each, medians: "
          f"wall {ratio_wall:.2f}x, cpu {ratio_cpu:.2f}x; peak {peaks['slabbed']['peak_mb'] / peaks['whole']['peak_mb']:.2f}x;"
          f" max abs diff of the outputs {r['max_abs_diff']:.3g}")
    print(f"no loss of speed (cpu ratio <= 1.0): {'met' if ratio_cpu <= 1.0 else 'NOT met'}")
    return 0


def _status_kb(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size of a process in kB (/proc/PID/smaps_rollup): its private pages plus its
    share of pages mapped by several processes (the receivers' Python, numpy and library pages), so a
    sum over processes counts each page once; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the node may run receiver processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except OSError:
            pass
    return out


def node_peak(series: Path, timeout: float = 600.0) -> dict:
    """Peak memory of a real node (`dicomnode serve`, defaults) while it receives and analyses `series`."""
    from benchmarks.peers import free_port, wait_port
    from benchmarks.turnaround import stop, wait_ready

    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("dcmtk storescu is not installed")
    with tempfile.TemporaryDirectory(prefix="inference-node-") as tmp:
        config, data = Path(tmp) / "node.toml", Path(tmp) / "data"
        config.write_text("")  # every default
        port, web_port = free_port(), free_port()
        log = (Path(tmp) / "node.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config), "--data-dir", str(data),
             "--host", "127.0.0.1", "--port", str(port), "--web-port", str(web_port)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        peak_tree_kb, peak_pss_kb, stop_sampling = 0, 0, threading.Event()

        def sample() -> None:
            nonlocal peak_tree_kb, peak_pss_kb
            while not stop_sampling.wait(0.1):
                tree = _tree(proc.pid)
                peak_tree_kb = max(peak_tree_kb, sum(_status_kb(p, "VmRSS") for p in tree))
                peak_pss_kb = max(peak_pss_kb, sum(_pss_kb(p) for p in tree))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            wait_port(port, proc, "dicomnode")
            from benchmarks.turnaround import Node

            wait_ready(Node(proc, port, web_port, data))
            idle_kb = _status_kb(proc.pid, "VmRSS")
            subprocess.run([storescu, "-aet", "BENCH", "-aec", "DICOMNODE", "+sd", "+r", "127.0.0.1", str(port),
                            str(series)], check=True, capture_output=True, timeout=300)
            deadline, done = time.monotonic() + timeout, None
            while time.monotonic() < deadline and done is None:
                time.sleep(0.5)
                with sqlite3.connect(f"file:{data / 'audit.sqlite'}?mode=ro", uri=True) as con:
                    done = con.execute("SELECT state, summary FROM jobs WHERE state IN ('done', 'failed')").fetchone()
            if done is None:
                raise RuntimeError(f"the node did not finish the job within {timeout:g} s")
            hwm_kb = _status_kb(proc.pid, "VmHWM")
        finally:
            stop_sampling.set()
            sampler.join()
            stop(proc)
    summary = json.loads(done[1] or "{}")
    return {"job": done[0], "idle_mb": idle_kb / 1024, "vmhwm_mb": hwm_kb / 1024, "tree_peak_mb": peak_tree_kb / 1024,
            "tree_pss_peak_mb": peak_pss_kb / 1024,
            "timings_s": summary.get("timings_s", {})}


def _available_configs() -> list[str]:
    engines = ["torch"] + (["onnxruntime"] if importlib.util.find_spec("onnxruntime") else [])
    return [f"{e}:{m}" for e in engines for m in ("tiled", "whole")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", help="comma-separated ENGINE:MODE (default: every available engine x tiled/whole)")
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", help="weights folder (default: the packaged demo weights)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/dicomnode-bench-cache"))
    ap.add_argument("--json", type=Path, help="also write all results here")
    ap.add_argument("--node", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the peak memory of a real node analysing the series (default on)")
    ap.add_argument("--ab", type=int, metavar="N",
                    help="only the slabbed vs one-pass detector check: N interleaved runs each (see above)")
    ap.add_argument("--memory-mb", type=int, default=512, help="the slabbed engine's detector_memory_mb (default 512)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "ab":
        print(json.dumps(_ab_child(args.image, args.ab, args.memory_mb, args.threads, args.cache_dir, args.weights)))
        return 0
    if args.child and args.child.startswith("peak:"):
        memory_mb = args.memory_mb if args.child == "peak:slabbed" else None
        print(json.dumps(_peak_child(args.image, memory_mb, args.threads, args.cache_dir, args.weights)))
        return 0
    if args.child:
        engine, mode = args.child.split(":")
        print(json.dumps(_child(engine, mode, args.series, args.threads, args.cache_dir, args.weights)))
        return 0

    if not args.series.is_dir():
        print(f"no series at {args.series}", file=sys.stderr)
        return 2
    if args.ab:
        return ab(args.series, args.ab, args.memory_mb, args.threads, args.cache_dir, args.weights)
    if args.node:
        n = node_peak(args.series)
        print(f"node process ({args.series.name}, default configuration): peak {n['vmhwm_mb'] / 1024:.2f} GB (VmHWM), "
              f"process tree peak {n['tree_pss_peak_mb'] / 1024:.2f} GB PSS (shared pages once; sum of RSS "
              f"{n['tree_peak_mb'] / 1024:.2f} GB, sampled), idle {n['idle_mb'] / 1024:.2f} GB; "
              f"job {n['job']}: " + "  ".join(f"{k} {v:.1f}" for k, v in n["timings_s"].items()), flush=True)
        # the whole node: the node process's own peak and the process tree's, each page counted once
        peak = max(n['vmhwm_mb'], n['tree_pss_peak_mb'])
        print(f"node peak memory {peak / 1024:.2f} GB: target <= 3 GB {'met' if peak <= 3 * 1024 else 'NOT met'}")
        if args.configs == "none":
            return 0
    configs = args.configs.split(",") if args.configs else _available_configs()
    results = []
    for config in configs:
        cmd = [sys.executable, __file__, "--child", config, "--series", str(args.series), "--threads", str(args.threads),
               "--cache-dir", str(args.cache_dir)] + (["--weights", args.weights] if args.weights else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{config}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        st = r["timings_s"]
        print(f"{config:20s} wall {r['wall_s']:6.1f} s  peak {r['peak_rss_mb'] / 1024:5.2f} GB  "
              + "  ".join(f"{k} {v:.1f}" for k, v in st.items() if k != "total")
              + f"  ({len(r['findings'])} findings, verdict {r['verdict']})", flush=True)
    by = {r["config"]: r for r in results}
    if BASELINE in by:
        base = by[BASELINE]
        for r in results:
            if r["config"] != BASELINE:
                print(f"{r['config']} / {BASELINE}: time {r['wall_s'] / base['wall_s']:.2f}x, "
                      f"detect {r['timings_s']['detect'] / base['timings_s']['detect']:.2f}x, "
                      f"peak memory {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")
    for r in results:
        ok = r["wall_s"] < 60 and r["peak_rss_mb"] < 6 * 1024
        print(f"{r['config']}: target < 60 s and < 6 GB {'met' if ok else 'NOT met'}")
    if results:
        print("findings (" + results[0]["config"] + "):")
        for f in results[0]["findings"]:
            print(f"  centre {f['center_mm']} mm, mean diameter {f['mean_diameter_mm']} mm, {f['type']}, "
                  f"p {f['probability']}, Brock {f['brock_risk']}, model score {f['model_score']}, "
                  f"Lung-RADS {f['lung_rads']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
