"""Scale: jobs per minute on N phantom series, for several set-ups measured in one run, as ratios.

Set-ups (issue 14): the node with its local engine (ONNX Runtime), and the node with engine "triton"
sending the detector's and classifier's forward passes to a Triton Inference Server (here the
nvidia-pytriton wheel's tritonserver on the same machine, Python backend running ONNX Runtime, the
repository written by `dicomnode model export-triton --backend python`).

Multi-node set-ups (issue 14, deploy/docker-compose.scale.yml on one machine): "pg1" is one node and
"pg2" two nodes, each node a separate `dicomnode serve` process with its own DICOM and web port and its
own data_dir, all on one real PostgreSQL (started here as the tests start it: initdb, postgres on a
loopback port, a fresh database per run) and one shared spool_dir and outbox_dir. The N series are sent
alternately to the nodes; every node's job workers claim from the one queue in the database (the
present compare-and-set claim, which PostgreSQL honours like SQLite). Reported beside the ratio: jobs
done by each node, jobs per series (1 expected: more would be a series analysed twice), CPU seconds
per job of the nodes and of PostgreSQL, the most connections PostgreSQL saw, and audit rows per study.
What this assumes until the lease work (node ids, leases, SKIP LOCKED) lands: no node starts or
restarts during a run (a starting node puts every `running` job back to `queued`, another node's too);
each series arrives whole on one association to one node; jobs per node are counted from each node's
log (the jobs table does not say which node ran a job yet).

Each set-up: fresh data dirs, the model loaded (/health 200), then N series sent by dcmtk storescu
one after the other; throughput = N / (first JOB_STARTED -> last JOB_DONE) from the audit DB. "Where
the time goes": the median per-job stage seconds of jobs.summary["timings_s"].

    python benchmarks/scale.py [--series 6] [--size tiny|small] [--threads 2] [--setups local,triton] [--rounds 2]
    python benchmarks/scale.py --setups pg1,pg2 --series 6 --size tiny --threads 1
    python benchmarks/scale.py --setups pg1 --size lidc --series 1   # CPU seconds of one real chest CT

On the 2-core development machine Triton and the node share the same two cores: this shows what
the remote protocol costs, not a GPU's gain (see docs/architecture.md, "Engines").
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from glob import glob
from pathlib import Path
from typing import Any, ContextManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.peers import free_port, stop, wait_healthy, wait_port  # noqa: E402

STAGES = ("load", "preprocess", "detect", "classify", "characterize", "encoding")
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(matrix=128, pixel_spacing_mm=2.5, n_slices=28, slice_spacing_mm=2.5, n_nodules=2),
    "small": dict(small=True),
}
TIMEOUT_S = 1800.0
# audit rows per study (sizing PostgreSQL: docs/sizing.md)
ROW_TABLES = ("associations", "studies", "series", "instances", "jobs", "findings", "deliveries", "events")


@dataclass
class Result:
    setup: str
    series: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    engine: str = ""
    # multi-node set-ups (None/empty otherwise)
    jobs_by_node: list[int] = field(default_factory=list)
    jobs_per_series: float | None = None
    node_cpu_s: float | None = None  # CPU seconds of all node processes (receivers included) per job
    db_cpu_s: float | None = None  # CPU seconds of the PostgreSQL server per job
    db_connections: int | None = None  # the most client connections PostgreSQL had at once
    rows_per_study: dict[str, float] = field(default_factory=dict)

    @property
    def jobs_per_minute(self) -> float:
        return 60.0 * self.series / self.seconds


# -- one set-up: a node (and what it needs) on a fresh data dir --------------------------------------
@dataclass
class Setup:
    name: str
    # yields the [inference] lines of the node's config while whatever they point at runs
    context: Callable[[Path, argparse.Namespace], ContextManager[str]]
    nodes: int = 1
    postgres: bool = False  # the audit database on PostgreSQL, spool and outbox shared by the nodes


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
    "pg1": Setup("1 node, PostgreSQL, shared spool (onnxruntime)", local_engine, nodes=1, postgres=True),
    "pg2": Setup("2 nodes, one PostgreSQL, one shared spool (onnxruntime)", local_engine, nodes=2, postgres=True),
}


def node_config(inference: str, shared: str = "") -> str:
    return f"""{shared}
[series]
stable_seconds = 0.5
poll_seconds = 0.2
[jobs]
poll_seconds = 0.2
[inference]
{inference}
"""


def shared_lines(database_url: str, shared: Path) -> str:
    """[node] lines of a node that shares the database, spool and outbox with the others (its data_dir,
    with the receivers' slot and pid files, stays its own: two nodes on one host must not share it)."""
    return (f'[node]\ndatabase_url = "{database_url}"\nspool_dir = "{shared / "spool"}"\n'
            f'outbox_dir = "{shared / "outbox"}"\n')


def start_node(workdir: Path, inference: str, shared: str = "") -> tuple[subprocess.Popen[bytes], int, int, Path]:
    data, port, web_port = workdir / "data", free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "node.toml"
    config.write_text(node_config(inference, shared))
    log = (workdir / "node.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config), "--data-dir", str(data),
         "--host", "127.0.0.1", "--port", str(port), "--web-port", str(web_port), "--log-level", "info"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_port(port, proc, "dicomnode")
    return proc, port, web_port, data


def utc(value: str | datetime) -> datetime:
    value = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def sqlite_url(db: Path) -> str:
    return f"sqlite:///{db}"


def wait_jobs(url: str, n: int, timeout: float = TIMEOUT_S, log: Path | None = None,
              watch: Callable[[], None] | None = None) -> None:
    """Until n jobs are done and none is queued or running; `watch` is called on every poll."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if watch:
                watch()
            try:
                with engine.connect() as con:
                    rows = con.execute(text("SELECT state, COUNT(*) FROM jobs GROUP BY state")).all()
                states: dict[str, int] = {str(state): int(count) for state, count in rows}
            except Exception:  # the node has not created its database yet
                states = {}
            if states.get("failed"):
                raise RuntimeError(f"{states['failed']} job(s) failed: see {log or 'the node logs'}")
            if states.get("done", 0) >= n and not states.get("queued") and not states.get("running"):
                return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise RuntimeError(f"{n} jobs not done within {timeout:g} s")


def measure_db(url: str, setup: str, n: int) -> Result:
    import json

    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as con:
            first = con.execute(text("SELECT MIN(at) FROM events WHERE name = 'JOB_STARTED'")).scalar_one()
            last = con.execute(text("SELECT MAX(at) FROM events WHERE name = 'JOB_DONE'")).scalar_one()
            summaries = [json.loads(s) if isinstance(s, str) else s
                         for s in con.execute(text("SELECT summary FROM jobs WHERE state = 'done'")).scalars()]
            series_with_jobs = con.execute(text("SELECT COUNT(DISTINCT series_id) FROM jobs")).scalar_one()
            rows = {table: con.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one() / n
                    for table in ROW_TABLES}
    finally:
        engine.dispose()
    stages: dict[str, float] = {}
    for stage in STAGES:
        values = [float(s["timings_s"][stage]) for s in summaries if stage in s.get("timings_s", {})]
        if values:
            stages[stage] = statistics.median(values)
    jobs = [float(s["seconds"]) for s in summaries if "seconds" in s]
    if jobs:
        stages["job"] = statistics.median(jobs)
    engine_name = str(summaries[0].get("model", {}).get("engine", "")) if summaries else ""
    result = Result(setup, n, (utc(last) - utc(first)).total_seconds(), stages, engine_name)
    result.jobs_per_series = len(summaries) / max(series_with_jobs, 1)
    result.rows_per_study = rows
    return result


def run_setup(key: str, folders: list[list[Path]], workdir: Path, args: argparse.Namespace,
              pg: "Postgres | None" = None) -> Result:
    setup = SETUPS[key]
    workdir.mkdir(parents=True)
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("dcmtk storescu is not installed (scripts/install.sh)")
    if setup.postgres:
        if pg is None:
            raise RuntimeError(f"set-up {key} needs PostgreSQL")
        url = pg.new_database()
        shared = shared_lines(url, workdir / "shared")
    else:
        url = sqlite_url(workdir / "node-1" / "data" / "audit.sqlite")
        shared = ""
    with setup.context(workdir, args) as inference:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ports = []
            for i in range(setup.nodes):  # one after the other: the first creates the schema
                proc, port, web_port, _ = start_node(workdir / f"node-{i + 1}", inference, shared)
                procs.append(proc)
                wait_healthy(proc, web_port)
                ports.append(port)
            usage = Usage(procs, pg)
            for i, files in enumerate(folders):  # one association per series, alternately to the nodes
                subprocess.run([storescu, "-aet", "SCANNER", "-aec", "DICOMNODE", "127.0.0.1",
                                str(ports[i % len(ports)]), *map(str, files)], check=True, capture_output=True)
                usage.sample()
            wait_jobs(url, len(folders), log=workdir / "node-1" / "node.log", watch=usage.sample)
            usage.sample()
        finally:
            for proc in procs:
                stop(proc)
    result = measure_db(url, setup.name, len(folders))
    if setup.postgres:
        result.jobs_by_node = [jobs_done_in_log(workdir / f"node-{i + 1}" / "node.log") for i in range(setup.nodes)]
        result.node_cpu_s = usage.node_cpu_s / len(folders)
        result.db_cpu_s = usage.db_cpu_s / len(folders)
        result.db_connections = usage.db_connections
    return result


def jobs_done_in_log(log: Path) -> int:
    """JOB_DONE events this node wrote (its log has the audit events it recorded itself)."""
    return len(re.findall(r'msg="JOB_DONE', log.read_text(errors="replace")))


class Usage:
    """CPU seconds of the node processes (with their receiver children) and of PostgreSQL (postmaster
    and backends), sampled while they run: a process that exits takes its counters with it, so each
    pid's last sample counts, under the side it was seen on. Also PostgreSQL's most connections."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], pg: "Postgres | None") -> None:
        import psutil

        self.nodes = [psutil.Process(p.pid) for p in procs]
        self.pg = pg
        self.start = self._cpu()  # (side, pid) -> CPU seconds before the series were sent
        self.last = dict(self.start)
        self.db_connections = 0

    def _cpu(self) -> dict[tuple[str, int], float]:
        import psutil

        roots = [("node", p) for p in self.nodes] + ([("db", self.pg.process())] if self.pg else [])
        found: dict[tuple[str, int], float] = {}
        for side, root in roots:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                found[(side, proc.pid)] = times.user + times.system
        return found

    def sample(self) -> None:
        self.last.update(self._cpu())
        if self.pg:
            self.db_connections = max(self.db_connections, self.pg.connections())

    def _spent(self, side: str) -> float:
        return sum(cpu - self.start.get(key, 0.0) for key, cpu in self.last.items() if key[0] == side)

    @property
    def node_cpu_s(self) -> float:
        return self._spent("node")

    @property
    def db_cpu_s(self) -> float:
        return self._spent("db")


# -- a real PostgreSQL, started as tests/storage/test_postgres.py does ----------------------------------
class Postgres:
    """initdb + postgres on a free loopback port (as the postgres user when run as root); one fresh
    database per set-up run."""

    def __init__(self, root: Path) -> None:
        bins = sorted(glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql; scripts/install.sh)")
        self.bin = bins[-1]
        self.root = root
        self.port = free_port()
        self.count = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_postgres(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, capture_output=True, text=True, check=False)

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.root, data):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        init = self._as_postgres([f"{self.bin}/initdb", "-D", str(data), "-U", "dicomnode", "--auth=trust"])
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr}")
        cmd = [f"{self.bin}/postgres", "-D", str(data), "-p", str(self.port), "-k", str(data),
               "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        self.proc = subprocess.Popen(["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while self._as_postgres([f"{self.bin}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("PostgreSQL did not accept connections within 60 s")
            time.sleep(0.3)

    def process(self) -> Any:
        """The postmaster (runuser's child when started through runuser)."""
        import psutil

        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        children = root.children()
        return children[0] if os.geteuid() == 0 and children else root

    def new_database(self) -> str:
        self.count += 1
        name = f"scale{self.count}"
        created = self._as_postgres([f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                     "dicomnode", name])
        if created.returncode:
            raise RuntimeError(f"createdb failed: {created.stderr}")
        return f"postgresql+psycopg://dicomnode@127.0.0.1:{self.port}/{name}"

    def connections(self) -> int:
        """Client backends connected now (all databases but this query's own)."""
        sql = "SELECT COUNT(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'"
        out = self._as_postgres([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "dicomnode",
                                 "-d", "postgres", "-Atc", sql])
        return int(out.stdout.strip() or 0)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


LIDC = REPO.parent / "shared" / "data" / "lidc-idri-0002" / "series"


def write_series(root: Path, n: int, size: str) -> list[list[Path]]:
    from inference.phantom import write_phantom_series

    if size == "lidc":  # the real chest CT, once: the CPU seconds of a real study for docs/sizing.md
        if n != 1:
            raise SystemExit("--size lidc sends the one real series: use --series 1")
        if not LIDC.is_dir():
            raise SystemExit(f"the LIDC series is not at {LIDC}")
        return [sorted(LIDC.iterdir())]

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
    multi = [r for r in results if r.jobs_by_node]
    if multi:
        print("\nseveral nodes on one PostgreSQL (jobs done by each node from its log; CPU seconds per job):")
        print(f"{'set-up':72s} {'jobs/node':>10s} {'jobs/series':>11s} {'node CPU-s':>10s} {'db CPU-s':>9s} "
              f"{'db conns':>8s}")
        for r in multi:
            print(f"{r.setup:72s} {'/'.join(map(str, r.jobs_by_node)):>10s} {r.jobs_per_series or 0:11.2f} "
                  f"{r.node_cpu_s or 0:10.2f} {r.db_cpu_s or 0:9.2f} {r.db_connections or 0:8d}")
        print("\naudit rows per study (PostgreSQL):")
        print(f"{'set-up':72s} " + " ".join(f"{t:>12s}" for t in ROW_TABLES))
        for r in multi:
            print(f"{r.setup:72s} " + " ".join(f"{r.rows_per_study.get(t, 0):12.1f}" for t in ROW_TABLES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=6, help="phantom series per set-up")
    parser.add_argument("--size", choices=(*SIZES, "lidc"), default="small",
                        help="tiny: 128x128x28; small: 256x256 thick slices (default); "
                             "lidc: the real lidc-idri-0002 series (261 slices; with --series 1)")
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
        os.chmod(root, 0o755)  # PostgreSQL (user postgres) keeps its data below it
        folders = write_series(root / "series", args.series, args.size)
        runs: dict[str, list[Result]] = {k: [] for k in keys}
        pg = Postgres(root / "postgres") if any(SETUPS[k].postgres for k in keys) else None
        try:
            if pg:
                pg.start()
            # interleaved rounds (local, triton, local, triton, ...): a shared machine's load drifts, and
            # it then drifts over every set-up alike
            for round_ in range(args.rounds):
                for key in keys:
                    print(f"round {round_ + 1}: {key}, {args.series} series ...", flush=True)
                    runs[key].append(run_setup(key, folders, root / f"{key}-{round_}", args, pg))
        finally:
            if pg:
                pg.stop()
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
