"""The disk's floor under the node's receive promise: what one instance costs, at the least, between its
last byte and the success status, on the disk the node would use (file fsync, rename + directory fsync,
an SQLite WAL commit with synchronous=FULL, as dicomnode.core.durable and storage.db do them).

dcmtk's storescp does none of this; a sender like storescu waits for each response, so these costs
add to every instance and cannot overlap the transfer. Compare their sum with storescp's time per
instance from `python benchmarks/ingest.py --no-orthanc` (seconds / slices): the node cannot be
closer to storescp than that sum allows.

    python benchmarks/durability_floor.py [--dir DIR] [--count 200] [--size-kb 528]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path


def measure(root: Path, count: int, size: int) -> dict[str, float]:
    """Median milliseconds of each step over `count` instances of `size` bytes written under `root`."""
    data = os.urandom(size)
    db = sqlite3.connect(root / "floor.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE instances (id INTEGER PRIMARY KEY, uid TEXT UNIQUE, path TEXT, size INTEGER)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="a folder on the disk the node's data dir is on")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size-kb", type=int, default=528, help="one 512x512 CT slice is about 528 KB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".durability-floor-") as tmp:
        medians = measure(Path(tmp), args.count, args.size_kb * 1024)
    for name, ms in medians.items():
        print(f"{name:<26} {ms:6.2f} ms")
    beyond_write = sum(ms for name, ms in medians.items() if name != "write")
    print(f"{'added by the promise':<26} {beyond_write:6.2f} ms per instance (file fsync + rename + directory fsync + WAL commit)")


if __name__ == "__main__":
    main()
