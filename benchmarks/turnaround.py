"""Turnaround: Orthanc (TCP_NODELAY=1) pushes a study to the node, the node analyses it with the
lung-nodule pipeline and sends the results back to Orthanc. Per-stage seconds come from the node's
audit database; the total is from the last instance the node acknowledged to the SR being found in
Orthanc (polled over its REST API every 0.1 s). Median of N runs, a fresh node data dir and a fresh
Orthanc for every run. The node runs its defaults except ports and paths (stable_seconds,
series.evidence_grace_seconds, the built-in chest-CT route with the lung-nodule pipeline), plus
`--send-to` Orthanc; the study is pushed once /health says the model is loaded.

Stages: transfer (first -> last instance received), wait (last instance -> SERIES_COMPLETE), queue
(SERIES_COMPLETE -> JOB_STARTED), the job's own stages from jobs.summary["timings_s"] (load,
preprocess, detect, classify, characterize, encode; "n/a" where absent), job other (the rest of the
job: reading the spool, writing the outbox), job (JOB_STARTED -> JOB_DONE), deliver (JOB_DONE -> last delivery sent), total (last instance -> SR in Orthanc).

The "thick" case is the issue's 133-slice 2.5 mm chest CT made from lidc-idri-0002: every second
slice (131 of 261), a new SeriesInstanceUID and SOPInstanceUIDs, SliceThickness and
SpacingBetweenSlices 2.5, written to a temporary folder. Each run also reports the node process's
peak memory (VmHWM from /proc, read when the results are delivered).

    python benchmarks/turnaround.py [--runs 3] [--case lidc|thick|phantom|all]

Targets (issue 16, 2 cores, CPU engine): <= 25 s for lidc-idri-0002 (261 slices); <= 20 s for a
133-slice 2.5 mm chest CT (the thick case); the phantom has no target of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.peers import free_port, stop, wait_healthy, wait_port  # noqa: E402
from tests.peers.orthanc import OrthancProcess  # noqa: E402  (standard library only)

LIDC = REPO.parent / "shared" / "data" / "lidc-idri-0002" / "series"
TARGETS = {"lidc": "<= 25 s (issue 16, lidc-idri-0002)",
           "thick": "<= 20 s (issue 16, a 133-slice 2.5 mm chest CT)",
           "phantom": "none: the issue's <= 20 s is for a 133-slice 2.5 mm CT, which this phantom is not"}
STAGES = ("transfer", "wait", "queue", "load", "preprocess", "detect", "classify", "characterize", "encode",
          "job other", "job", "deliver", "total", "peak GB")
JOB_TIMINGS = {"load": "load", "preprocess": "preprocess", "detect": "detect", "classify": "classify",
               "characterize": "characterize", "encode": "encoding"}
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88",)  # every Structured Report storage class starts so
TIMEOUT_S = 600.0


@dataclass
class Node:
    """A node process started for one run (`dicomnode serve`)."""

    proc: subprocess.Popen[bytes]
    port: int
    web_port: int
    data_dir: Path


def start_node(workdir: Path, orthanc: OrthancProcess, port: int) -> Node:
    """The node with its defaults except ports and paths, sending results to `orthanc`."""
    data, web_port = workdir / "data", free_port()
    workdir.mkdir(parents=True)
    config = workdir / "node.toml"
    config.write_text("")  # every default: the built-in route (lung-nodule), stable_seconds, the grace
    log = (workdir / "node.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config), "--data-dir", str(data),
         "--host", "127.0.0.1", "--port", str(port), "--web-port", str(web_port), "--log-level", "info",
         "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_port(port, proc, "dicomnode")
    return Node(proc, port, web_port, data)


def wait_ready(node: Node, timeout: float = 300.0) -> None:
    wait_healthy(node.proc, node.web_port, timeout)


def load_study(orthanc: OrthancProcess, folder: Path) -> str:
    """Upload every DICOM file of `folder` to Orthanc; returns the Orthanc study ID."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm")
    answers = orthanc.upload_many([p for p in files if p.is_file()])
    studies = {a["ParentStudy"] for a in answers if "ParentStudy" in a}
    if len(studies) != 1:
        raise RuntimeError(f"{folder}: expected one study in Orthanc, got {len(studies)}")
    return studies.pop()


def wait_sr(orthanc: OrthancProcess, before: set[str], timeout: float = TIMEOUT_S) -> datetime:
    """Poll Orthanc until an SR instance not in `before` is stored; the UTC time it was first seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sr_instances(orthanc) - before:
            return datetime.now(timezone.utc)
        time.sleep(0.1)
    raise RuntimeError(f"no SR reached Orthanc within {timeout:g} s")


def sr_instances(orthanc: OrthancProcess) -> set[str]:
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})
    return set(found)


def wait_deliveries(db: Path, timeout: float = 120.0) -> None:
    """Until the node has no delivery left pending or sending (so the last DELIVERY_SENT is in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            open_, total = con.execute(
                "SELECT SUM(state IN ('pending','sending')), COUNT(*) FROM deliveries").fetchone()
        if total and not open_:
            return
        time.sleep(0.2)
    raise RuntimeError("the node's deliveries did not finish")


def utc(text: str | None) -> datetime | None:
    """An audit timestamp (SQLite stores them as text, UTC, sometimes without the offset)."""
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def stage_times(db: Path, sr_seen: datetime) -> dict[str, float | None]:
    """Per-stage seconds of the one analysed series, from the audit database."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        job_id, series_id, summary = con.execute(
            "SELECT id, series_id, summary FROM jobs WHERE state = 'done' ORDER BY id LIMIT 1").fetchone()
        uid, = con.execute("SELECT series_instance_uid FROM series WHERE id = ?", (series_id,)).fetchone()
        first, last = (utc(t) for t in con.execute(
            "SELECT MIN(received_at), MAX(received_at) FROM instances WHERE series_id = ?", (series_id,)).fetchone())

        def event(name: str, **where: Any) -> datetime | None:
            key, value = next(iter(where.items()))
            row = con.execute(f"SELECT MIN(at) FROM events WHERE name = ? AND {key} = ?", (name, value)).fetchone()
            return utc(row[0])

        complete = event("SERIES_COMPLETE", series_instance_uid=uid)
        started, done = event("JOB_STARTED", job_id=job_id), event("JOB_DONE", job_id=job_id)
        sent = utc(con.execute("SELECT MAX(delivered_at) FROM deliveries WHERE job_id = ?", (job_id,)).fetchone()[0])
    finally:
        con.close()
    timings = (json.loads(summary) if summary else {}).get("timings_s", {})
    times: dict[str, float | None] = {
        "transfer": seconds(first, last), "wait": seconds(last, complete), "queue": seconds(complete, started),
        "job": seconds(started, done), "deliver": seconds(done, sent), "total": seconds(last, sr_seen)}
    times.update({stage: timings.get(key) for stage, key in JOB_TIMINGS.items()})
    # the job's time outside the pipeline's own stages: reading the spool, writing the outbox and audit rows
    parts = [times[stage] for stage in JOB_TIMINGS]
    job = times["job"]
    times["job other"] = None if job is None or None in parts else job - sum(p for p in parts if p is not None)
    return times


def one_run(folder: Path, workdir: Path) -> dict[str, float | None]:
    """Fresh Orthanc and node; Orthanc pushes the study; the stage times of this run."""
    node_port = free_port()
    orthanc = OrthancProcess(workdir / "orthanc", modalities={"NODE": ["DICOMNODE", "127.0.0.1", node_port]},
                             dicomweb=False)
    orthanc.start()
    node: Node | None = None
    try:
        study = load_study(orthanc, folder)
        before = sr_instances(orthanc)
        node = start_node(workdir / "node", orthanc, node_port)
        wait_ready(node)
        job = orthanc.store_to_modality("NODE", [study])
        sr_seen = wait_sr(orthanc, before)
        orthanc.wait_job(job["ID"])
        db = node.data_dir / "audit.sqlite"
        wait_deliveries(db)
        peak_kb = vmhwm_kb(node.proc.pid)
        return {**stage_times(db, sr_seen), "peak GB": peak_kb / 2**20 if peak_kb else None}
    finally:
        if node is not None:
            stop(node.proc)
        orthanc.stop()


def measure(folder: Path, workdir: Path) -> dict[str, float | None]:
    """One run; its folder (two copies of the study) is removed after it; a failure prints the logs' tails."""
    try:
        times = one_run(folder, workdir)
    except Exception:
        for log in (workdir / "node" / "node.log", workdir / "orthanc" / "orthanc.log"):
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-30:]
                print(f"--- {log.name}, last lines:\n" + "\n".join(tail), file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return times


def vmhwm_kb(pid: int) -> int:
    """The peak resident memory of a process so far (VmHWM in /proc/PID/status), kB; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_thick(out: Path, source: Path = LIDC) -> Path:
    """lidc-idri-0002 at 2.5 mm: every second slice along the normal, new series and instance UIDs."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    datasets = [dcmread(p) for p in sorted(source.iterdir()) if p.suffix.lower() == ".dcm"]
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    series_uid = generate_uid(entropy_srcs=["turnaround-thick", str(datasets[0].SeriesInstanceUID)])
    out.mkdir(parents=True)
    for number, ds in enumerate(datasets[::2], start=1):
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["turnaround-thick", str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SliceThickness = 2.5
        ds.SpacingBetweenSlices = 2.5
        ds.InstanceNumber = number
        ds.save_as(out / f"{number:06d}.dcm", enforce_file_format=True)
    return out


def write_phantom(out: Path) -> Path:
    """`dicomnode phantom OUT`: the synthetic chest CT of seed 0, full size (225 slices)."""
    subprocess.run([sys.executable, "-m", "dicomnode.cli", "phantom", str(out)], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    return out


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(case: str, folder: Path, runs: list[dict[str, float | None]]) -> None:
    """Median per stage beside each run, and the target."""
    slices = sum(1 for p in folder.iterdir() if p.suffix.lower() == ".dcm")
    print(f"\n{case}: {folder} ({slices} slices), {len(runs)} run(s); seconds, median [runs]")
    for stage in STAGES:
        values = [r[stage] for r in runs]
        known = [v for v in values if v is not None]
        median = statistics.median(known) if len(known) == len(values) and known else None
        print(f"  {stage:13s} {fmt(median):>7s}   [{' '.join(fmt(v) for v in values)}]")
    print(f"  target (last instance acknowledged -> SR in Orthanc): {TARGETS[case]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", choices=["lidc", "thick", "phantom", "all"], default="all")
    args = parser.parse_args()
    cases = ["thick", "lidc", "phantom"] if args.case == "all" else [args.case]
    with tempfile.TemporaryDirectory(prefix="turnaround-bench-") as tmp:  # removed at the end, logs too
        for case in cases:
            folder = {"lidc": lambda: LIDC, "thick": lambda: write_thick(Path(tmp) / "thick"),
                      "phantom": lambda: write_phantom(Path(tmp) / "phantom")}[case]()
            runs = [measure(folder, Path(tmp) / f"{case}-{i}") for i in range(args.runs)]
            report(case, folder, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
