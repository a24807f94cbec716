"""Two processes exporting the same engine graphs into one cache at once (two node workers, or the node and
`characterize_eval`): each writes its own temporary file, so both get whole graphs. With one temporary name for both,
the second to finish found its file renamed away by the first and failed (FileNotFoundError); it takes the two writes
falling within milliseconds of each other, so the test starts the two exports together ROUNDS times."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import onnx

ROUNDS = 16
EXPORTER = """
import sys, time
from pathlib import Path
import torch
from inference.engines.slabbed import export_split
from inference.nets.dpn3d import DPN26Detector
torch.manual_seed(3)
torch.set_num_threads(1)
model = DPN26Detector().eval()
root, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for k in range(rounds):
    (root / f"ready{k}-{me}").touch()
    while not (root / f"go{k}").exists():
        time.sleep(0.002)
    for path in export_split(model, root / f"cache{k}", "f" * 64):
        print(path)
"""


def _wait_until_ready(paths: list[Path], procs: list[subprocess.Popen[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:  # an exporter died in the previous round
                raise AssertionError(f"an exporter failed: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"an exporter never got ready: {paths}"
        time.sleep(0.005)


def test_two_processes_exporting_the_same_graphs_at_once_both_get_whole_graphs(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", EXPORTER, str(tmp_path), me, str(ROUNDS)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
             for me in ("a", "b")]
    try:
        for k in range(ROUNDS):
            _wait_until_ready([tmp_path / f"ready{k}-{me}" for me in ("a", "b")], procs, 120)
            (tmp_path / f"go{k}").touch()  # both waiting: the exports start together
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    printed = [out.split() for out, _ in results]
    assert printed[0] == printed[1] and len(printed[0]) == 3 * ROUNDS
    for k in range(ROUNDS):
        cache = tmp_path / f"cache{k}"
        names = [Path(n) for n in printed[0] if Path(n).parent == cache]
        assert sorted(p.name for p in cache.iterdir()) == sorted(n.name for n in names), "temporary files left"
        for name in names:
            onnx.checker.check_model(onnx.load(str(name)))
