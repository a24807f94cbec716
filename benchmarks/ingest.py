"""Ingest speed: the same 300-slice 512x512 CT series sent with dcmtk storescu to the node, to dcmtk
storescp and to Orthanc (both with TCP_NODELAY=1), interleaved, each peer fresh for every run.

Prints the median seconds per peer and the ratios node/storescp and node/Orthanc.
Target (issue 2): node within 1.5x of storescp, with fsync and audit.

Concurrent mode (issue 16): three series of --slices slices, each split over two associations (its
first and second half), sent by six storescu processes at once, to the node and to dcmtk
`storescp --fork` (TCP_NODELAY=1), interleaved, each peer fresh for every run; the time is from the
first sender's start to the last sender's end. After every node run the node's audit database is
checked: every instance a sender saw acknowledged (storescu -v "Received Store Response (Success)")
must have its row in `instances`. Target: node <= 1.3x storescp --fork.

    python benchmarks/ingest.py [--runs 5] [--slices 300]
    python benchmarks/ingest.py --concurrent 6 [--runs 3] [--slices 300]

--receive-processes N sets the node's node.receive_processes (default: the node's own default, one
receiver process per core, at most 4); the node is sent nothing before every receiver listens
(its NODE_STARTED event).
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.peers import NodePeer, OrthancPeer, Peer, StoreScpForkPeer, StoreScpPeer  # noqa: E402

ACK = b"Received Store Response (Success)"


def write_series(folder: Path, slices: int, seed: int = 0) -> int:
    """A CT series with body-like content (int16 HU with noise), one file per slice."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 < 1
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    total = 0
    for i in range(slices):
        hu = np.where(body, 40, -1000) + rng.normal(0, 20, (512, 512))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Ingest", "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250, -250, -i * 1.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu.astype(np.int16).tobytes()
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def send(port: int, called: str, folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["storescu", "-aet", "BENCH", "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def split_series(folders: list[Path], parts: int, out: Path) -> list[Path]:
    """Each series' files cut into `parts` consecutive runs of slices, one folder (hard links) per sender."""
    senders: list[Path] = []
    for folder in folders:
        files = sorted(folder.glob("*.dcm"))
        size = -(-len(files) // parts)
        for part in range(parts):
            target = out / f"{folder.name}-{part}"
            target.mkdir(parents=True)
            for f in files[part * size:(part + 1) * size]:
                os.link(f, target / f.name)
            senders.append(target)
    return senders


def send_concurrently(port: int, called: str, folders: list[Path], logs: Path) -> tuple[float, int]:
    """One storescu per folder, all started at once; (seconds until the last ends, acknowledged instances)."""
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"storescu-{i}.log" for i in range(len(folders))]
    start = time.perf_counter()
    procs = []
    for folder, path in zip(folders, paths):
        with path.open("wb") as log:
            procs.append(subprocess.Popen(["storescu", "-v", "-aet", "BENCH", "-aec", called, "+sd", "127.0.0.1",
                                           str(port), str(folder)], stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(600) for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"storescu exit codes {codes} (logs in {logs})")
    return elapsed, sum(path.read_bytes().count(ACK) for path in paths)


def start_peer(peer: Peer) -> None:
    """Start a peer; a node only counts as started once all its receiver processes listen (the
    port opens with the first one). Then the disk is settled (sync, untimed): a peer that does not
    fsync (storescp, Orthanc) leaves its run's data dirty in the page cache, and on ext4 the next
    peer's first fsyncs would write it out for it."""
    peer.start()
    if isinstance(peer, NodePeer):
        _wait_started(peer)
    os.sync()


def _wait_started(peer: NodePeer) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{peer.audit_db}?mode=ro", uri=True) as con:
                if con.execute("SELECT 1 FROM events WHERE code = 100").fetchone():
                    return
        except sqlite3.Error:
            pass  # not created or not migrated yet
        time.sleep(0.1)
    raise RuntimeError("the node did not record NODE_STARTED within 120 s")


def audited_instances(peer: NodePeer) -> int:
    """Rows in the node's `instances` table: what its audit database holds as received."""
    with sqlite3.connect(f"file:{peer.audit_db}?mode=ro", uri=True) as con:
        return int(con.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def concurrent_mode(args: argparse.Namespace, tmp: Path) -> int:
    """Three series over `args.concurrent` associations at once: node vs storescp --fork."""
    series = [tmp / f"series-{i}" for i in range(3)]
    size = sum(write_series(folder, args.slices, seed=i) for i, folder in enumerate(series))
    senders = split_series(series, args.concurrent // len(series), tmp / "senders")
    print(f"concurrent: 3 series x {args.slices} slices ({size / 1e6:.0f} MB) over {len(senders)} associations "
          f"at once; {args.runs} interleaved runs per peer")
    peers: list[type[Peer]] = [StoreScpForkPeer, NodePeer]
    times: dict[str, list[float]] = {p.name: [] for p in peers}
    for run in range(args.runs):
        for cls in peers:
            peer = cls(tmp / f"{cls.__name__}-{run}")
            start_peer(peer)
            try:
                seconds, acked = send_concurrently(peer.port, peer.ae_title, senders, tmp / f"logs-{cls.__name__}-{run}")
                times[cls.name].append(seconds)
                if isinstance(peer, NodePeer):
                    rows = audited_instances(peer)
                    verdict = "ok" if rows >= acked else f"MISSING {acked - rows}"
                    print(f"run {run + 1}: node acknowledged {acked}, audit DB instances {rows}: {verdict}")
            finally:
                peer.stop()
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:22s} median {medians[name]:.2f} s  runs {' '.join(f'{x:.2f}' for x in t)}")
    ratio = medians[NodePeer.name] / medians[StoreScpForkPeer.name]
    print(f"ratio dicomnode / dcmtk storescp --fork: {ratio:.2f}x (target <= 1.3x)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--concurrent", type=int, default=0, metavar="N",
                        help="N associations at once (a multiple of 3: three series, each split N/3 ways)")
    parser.add_argument("--receive-processes", type=int, default=None, metavar="N",
                        help="the node's node.receive_processes (default: the node's default for this machine)")
    args = parser.parse_args()
    if args.receive_processes is not None:
        os.environ["DICOMNODE_NODE__RECEIVE_PROCESSES"] = str(args.receive_processes)  # NodePeer passes its env on
    if args.concurrent:
        if args.concurrent % 3:
            parser.error("--concurrent must be a multiple of 3 (three series, each split the same number of ways)")
        with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
            return concurrent_mode(args, Path(tmp))
    peers = [StoreScpPeer, NodePeer] + ([] if args.no_orthanc else [OrthancPeer])
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        series = Path(tmp) / "series"
        size = write_series(series, args.slices)
        print(f"series: {args.slices} slices, {size / 1e6:.0f} MB; {args.runs} interleaved runs per peer")
        times: dict[str, list[float]] = {p.name: [] for p in peers}
        for run in range(args.runs):
            for cls in peers:
                peer = cls(Path(tmp) / f"{cls.__name__}-{run}")
                start_peer(peer)
                try:
                    times[cls.name].append(send(peer.port, peer.ae_title, series))
                finally:
                    peer.stop()
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, t in times.items():
            print(f"{name:16s} median {medians[name]:.2f} s  runs {' '.join(f'{x:.2f}' for x in t)}")
        node = medians["dicomnode"]
        print(f"ratio dicomnode / dcmtk storescp: {node / medians['dcmtk storescp']:.2f}x (target <= 1.5x)")
        if "Orthanc" in medians:
            print(f"ratio dicomnode / Orthanc:        {node / medians['Orthanc']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
