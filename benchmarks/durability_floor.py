"""The disk's floor under the node's receive promise: what one instance costs, at the least, between its
last byte and the success status, on the disk the node would use (file fsync, rename + directory fsync,
an SQLite WAL commit with synchronous=FULL, as dicomnode.core.durable and storage.db do them).

dcmtk's storescp does none of this; a sender like storescu waits for each response, so these costs
add to every instance and cannot overlap the transfer. Compare their sum with storescp's time per
instance from `python benchmarks/ingest.py --no-orthanc` (seconds / slices): the node cannot be
closer to storescp than that sum allows.

With `--writers N` it also times N processes writing `count` instances between them at once, first
only writing them (what storescp --fork does to the disk), then with the promise (each instance's file
fsync, rename + directory fsync by the node's own dicomnode.core.durable.write_durably, and its own WAL
commit; concurrent commits and fsyncs may share the disk's flushes): the difference is the least time the
promise adds to N concurrent associations.

    python benchmarks/durability_floor.py [--dir DIR] [--count 200] [--size-kb 528] [--writers 6]
"""
from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicomnode.core.durable import write_durably  # noqa: E402  (the node's own write, for the concurrent floor)


def _floor_db(root: Path) -> sqlite3.Connection:
    """The instance table in an SQLite database set up as storage.db sets up the node's (WAL, synchronous=FULL)."""
    db = sqlite3.connect(root / "floor.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY, uid TEXT UNIQUE, path TEXT, size INTEGER)")
    return db


def measure(root: Path, count: int, size: int) -> dict[str, float]:
    """Median milliseconds of each step over `count` instances of `size` bytes written under `root`
    (write_durably's steps one by one, each timed)."""
    data = os.urandom(size)
    db = _floor_db(root)
    steps: dict[str, list[float]] = {"write": [], "file fsync": [], "rename + directory fsync": [], "WAL commit": []}
    for i in range(count):
        t0 = time.perf_counter()
        fd = os.open(root / f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        t1 = time.perf_counter()
        os.fsync(fd)
        os.close(fd)
        t2 = time.perf_counter()
        os.replace(root / f".{i}.tmp", root / f"{i}.dcm")
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        t3 = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO instances (uid, path, size) VALUES (?, ?, ?)", (f"1.2.3.{i}", f"{i}.dcm", size))
        db.execute("COMMIT")
        t4 = time.perf_counter()
        for name, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[name].append(seconds)
    db.close()
    return {name: statistics.median(values) * 1e3 for name, values in steps.items()}


def _write_share(root: Path, first: int, count: int, size: int, promise: bool, start: multiprocessing.synchronize.Barrier) -> None:
    data = os.urandom(size)
    db = sqlite3.connect(root / "floor.sqlite", isolation_level=None, timeout=60)
    start.wait()
    for i in range(first, first + count):
        if not promise:
            fd = os.open(root / f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data)
            os.close(fd)
            os.replace(root / f".{i}.tmp", root / f"{i}.dcm")
        else:
            write_durably(root / f"{i}.dcm", data)
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO instances (uid, path, size) VALUES (?, ?, ?)", (f"1.2.3.{i}", f"{i}.dcm", size))
            db.execute("COMMIT")
    db.close()


def measure_concurrent(root: Path, writers: int, count: int, size: int, promise: bool) -> float:
    """Seconds for `writers` processes to write `count` instances between them (from a common start)."""
    db = _floor_db(root)
    db.execute("DELETE FROM instances")
    db.close()
    os.sync()  # earlier runs' dirty pages are not this run's to write out
    start = multiprocessing.Barrier(writers + 1)
    share = count // writers
    procs = [multiprocessing.Process(target=_write_share, args=(root, n * share, share, size, promise, start))
             for n in range(writers)]
    for proc in procs:
        proc.start()
    start.wait()
    t0 = time.perf_counter()
    for proc in procs:
        proc.join()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="a folder on the disk the node's data dir is on")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size-kb", type=int, default=528, help="one 512x512 CT slice is about 528 KB")
    parser.add_argument("--writers", type=int, default=0, help="also time this many concurrent writer processes")
    parser.add_argument("--runs", type=int, default=3, help="concurrent runs of each kind (interleaved; medians)")
    args = parser.parse_args()
    if args.writers:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix=".durability-floor-") as tmp:
            plain, durable = [], []
            for _ in range(args.runs):
                plain.append(measure_concurrent(Path(tmp), args.writers, args.count, args.size_kb * 1024, False))
                durable.append(measure_concurrent(Path(tmp), args.writers, args.count, args.size_kb * 1024, True))
        p, d = statistics.median(plain), statistics.median(durable)
        print(f"{args.writers} writers, {args.count} instances: only writing {p:.2f} s, with the promise {d:.2f} s "
              f"(median of {args.runs}): the promise adds {d - p:.2f} s, {(d - p) / args.count * 1e3:.2f} ms per instance")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".durability-floor-") as tmp:
        medians = measure(Path(tmp), args.count, args.size_kb * 1024)
    for name, ms in medians.items():
        print(f"{name:<26} {ms:6.2f} ms")
    beyond_write = sum(ms for name, ms in medians.items() if name != "write")
    print(f"{'added by the promise':<26} {beyond_write:6.2f} ms per instance (file fsync + rename + directory fsync + WAL commit)")


if __name__ == "__main__":
    main()
