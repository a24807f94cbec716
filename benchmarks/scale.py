"""Scale: jobs per minute on N phantom series, for several set-ups measured in one run, as ratios.

Set-ups (issue 14): the node with its local engine (ONNX Runtime), and the node with engine "triton"
sending the detector's and classifier's forward passes to a Triton Inference Server (here the
nvidia-pytriton wheel's tritonserver on the same machine, Python backend running ONNX Runtime, the
repository written by `dicomnode model export-triton --backend python`). The multi-node set-ups
(1 vs 2 nodes on one PostgreSQL) are added to SETUPS when the lease work lands.

Each set-up: a fresh node data dir, the model loaded (/health 200), then N series sent by dcmtk
storescu one after the other; throughput = N / (first JOB_STARTED -> last JOB_DONE) from the audit
DB. "Where the time goes": the median per-job stage seconds of jobs.summary["timings_s"].

    python benchmarks/scale.py [--series 6] [--size tiny|small] [--threads 2] [--setups local,triton] [--rounds 2]

On the 2-core development machine Triton and the node share the same two cores: this shows what
the remote protocol costs, not a GPU's gain (see docs/architecture.md, "Engines").
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.peers import free_port, stop, wait_healthy, wait_port  # noqa: E402

STAGES = ("load", "preprocess", "detect", "classify", "characterize", "encoding")
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(matrix=128, pixel_spacing_mm=2.5, n_slices=28, slice_spacing_mm=2.5, n_nodules=2),
    "small": dict(small=True),
}
TIMEOUT_S = 1800.0


@dataclass
class Result:
    setup: str
    series: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    engine: str = ""

    @property
    def jobs_per_minute(self) -> float:
        return 60.0 * self.series / self.seconds


# -- one set-up: a node (and what it needs) on a fresh data dir --------------------------------------
@dataclass
class Setup:
    name: str
    # yields the [inference] lines of the node's config while whatever they point at runs
    context: Callable[[Path, argparse.Namespace], Any]


@contextmanager
def local_engine(workdir: Path, args: argparse.Namespace) -> Iterator[str]:
    yield f'engine = "onnxruntime"\nthreads = {args.threads}\n'


@contextmanager
def triton_engine(workdir: Path, args: argparse.Namespace) -> Iterator[str]:
    from inference.triton_local import LocalTriton

    repo = workdir / "triton-repo"
    subprocess.run([sys.executable, "-m", "dicomnode.cli", "model", "export-triton", str(repo), "--backend", "python"],
                   cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    server = LocalTriton(repo, free_port(), free_port(), free_port(), workdir=workdir / "tritonserver",
                         threads=args.threads)
    server.start()
    try:
        yield f'engine = "triton"\ntriton_url = "{server.url}"\nthreads = {args.threads}\n'
    finally:
        server.stop()


SETUPS: dict[str, Setup] = {
    "local": Setup("local (onnxruntime in the node)", local_engine),
    "triton": Setup("triton (tritonserver, Python backend + onnxruntime)", triton_engine),
}


def node_config(inference: str) -> str:
    return f"""
[series]
stable_seconds = 0.5
poll_seconds = 0.2
[jobs]
poll_seconds = 0.2
[inference]
{inference}
"""


def start_node(workdir: Path, inference: str) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    data, port, web_port = workdir / "data", free_port(), free_port()
    config = workdir / "node.toml"
    config.write_text(node_config(inference))
    log = (workdir / "node.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config), "--data-dir", str(data),
         "--host", "127.0.0.1", "--port", str(port), "--web-port", str(web_port), "--log-level", "info"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_port(port, proc, "dicomnode")
    return proc, port, web_port, data


def utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def wait_jobs(db: Path, n: int, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                done, failed = con.execute(
                    "SELECT SUM(state = 'done'), SUM(state = 'failed') FROM jobs").fetchone()
            if failed:
                raise RuntimeError(f"{failed} job(s) failed: see {db.parent.parent / 'node.log'}")
            if (done or 0) >= n:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{n} jobs not done within {timeout:g} s")


def measure_db(db: Path, setup: str, n: int) -> Result:
    import json

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        first = con.execute("SELECT MIN(at) FROM events WHERE name = 'JOB_STARTED'").fetchone()[0]
        last = con.execute("SELECT MAX(at) FROM events WHERE name = 'JOB_DONE'").fetchone()[0]
        summaries = [json.loads(s) if isinstance(s, str) else s
                     for (s,) in con.execute("SELECT summary FROM jobs WHERE state = 'done'")]
    finally:
        con.close()
    stages: dict[str, float] = {}
    for stage in STAGES:
        values = [float(s["timings_s"][stage]) for s in summaries if stage in s.get("timings_s", {})]
        if values:
            stages[stage] = statistics.median(values)
    jobs = [float(s["seconds"]) for s in summaries if "seconds" in s]
    if jobs:
        stages["job"] = statistics.median(jobs)
    engine = str(summaries[0].get("model", {}).get("engine", "")) if summaries else ""
    return Result(setup, n, (utc(last) - utc(first)).total_seconds(), stages, engine)


def run_setup(key: str, folders: list[list[Path]], workdir: Path, args: argparse.Namespace) -> Result:
    setup = SETUPS[key]
    workdir.mkdir(parents=True)
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("dcmtk storescu is not installed (scripts/install.sh)")
    with setup.context(workdir, args) as inference:
        proc, port, web_port, data = start_node(workdir, inference)
        try:
            wait_healthy(proc, web_port)
            for files in folders:  # one association per series, one after the other
                subprocess.run([storescu, "-aet", "SCANNER", "-aec", "DICOMNODE", "127.0.0.1", str(port),
                                *map(str, files)], check=True, capture_output=True)
            wait_jobs(data / "audit.sqlite", len(folders))
        finally:
            stop(proc)
    return measure_db(data / "audit.sqlite", setup.name, len(folders))


def write_series(root: Path, n: int, size: str) -> list[list[Path]]:
    from inference.phantom import write_phantom_series

    return [list(write_phantom_series(root / f"phantom-{seed}", seed, **SIZES[size]).files)
            for seed in range(7000, 7000 + n)]


def report(results: list[Result]) -> None:
    base = results[0]
    print(f"\n{'set-up':72s} {'engine':14s} {'series':>6s} {'seconds':>8s} {'jobs/min':>9s} {'ratio':>6s}")
    for r in results:
        print(f"{r.setup:72s} {r.engine:14s} {r.series:6d} {r.seconds:8.1f} {r.jobs_per_minute:9.2f} "
              f"{r.jobs_per_minute / base.jobs_per_minute:6.2f}")
    print("\nwhere the time goes (median seconds per job, jobs.summary timings_s):")
    keys = [k for k in (*STAGES, "job") if any(k in r.stages for r in results)]
    print(f"{'set-up':72s} " + " ".join(f"{k:>12s}" for k in keys))
    for r in results:
        print(f"{r.setup:72s} " + " ".join(f"{r.stages.get(k, float('nan')):12.2f}" for k in keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=6, help="phantom series per set-up")
    parser.add_argument("--size", choices=tuple(SIZES), default="small",
                        help="tiny: 128x128x28; small: 256x256 thick slices (default)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (the node's, or Triton's model)")
    parser.add_argument("--setups", default="local,triton", help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median run is reported")
    args = parser.parse_args()
    keys = [k.strip() for k in args.setups.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SETUPS]
    if unknown:
        parser.error(f"unknown set-up(s) {', '.join(unknown)}: choose from {', '.join(SETUPS)}")
    with tempfile.TemporaryDirectory(prefix="dicomnode-scale-") as tmp:
        root = Path(tmp)
        folders = write_series(root / "series", args.series, args.size)
        runs: dict[str, list[Result]] = {k: [] for k in keys}
        # interleaved rounds (local, triton, local, triton, ...): a shared machine's load drifts, and
        # it then drifts over every set-up alike
        for round_ in range(args.rounds):
            for key in keys:
                print(f"round {round_ + 1}: {key}, {args.series} series ...", flush=True)
                runs[key].append(run_setup(key, folders, root / f"{key}-{round_}", args))
        report([median_result(runs[k]) for k in keys])
    return 0


def median_result(results: list[Result]) -> Result:
    """The run with the (upper) median seconds, its stages with it, and every run's seconds in its name."""
    ordered = sorted(results, key=lambda r: r.seconds)
    mid = ordered[len(ordered) // 2]
    if len(results) > 1:
        mid.setup = f"{mid.setup} [{', '.join(f'{r.seconds:.0f}' for r in results)} s]"
    return mid


if __name__ == "__main__":
    raise SystemExit(main())
