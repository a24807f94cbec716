"""Shared test fixtures: where the real data lives, and skips that say why."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LIDC_SERIES = SHARED_DATA / "lidc-idri-0002" / "series"
TRANSFER_SYNTAXES = SHARED_DATA / "transfer-syntaxes"
LUNA16_EVAL = SHARED_DATA / "luna16-eval"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores (--maxprocesses still caps it). Many tests wait on a
    peer (a node's completion timer, Orthanc, a retry); an extra worker keeps the cores busy meanwhile
    (on 2 cores, two workers left about a tenth of the CPU idle)."""
    return (os.cpu_count() or 1) + 1


# the node setting that the `one_receiver` marker sets, as an environment variable (dicomnode.config reads
# DICOMNODE_* variables for `dicomnode serve` processes and for Node(load_settings(...)) in the test process)
ONE_RECEIVER_ENV = "DICOMNODE_NODE__RECEIVE_PROCESSES"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Tests marked `one_receiver` run their nodes with node.receive_processes = 1: the DICOM receiver in
    the node's own process (a supported setting) instead of one receiver interpreter per core. For tests
    whose subject is not receiving (the console, delivery, priors, engines...): each node start then costs
    two interpreters' imports less (about 2.3 s of CPU each). The default, several receiver processes,
    stays under test everywhere receiving is the subject (tests/node's ingest and completion, tests/security,
    tests/e2e, tests/deploy). Set around the test's setup, call and teardown, so module fixtures see it."""
    marked = item.get_closest_marker("one_receiver") is not None
    before = os.environ.get(ONE_RECEIVER_ENV)
    if marked:
        os.environ[ONE_RECEIVER_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ONE_RECEIVER_ENV, None)
        else:
            os.environ[ONE_RECEIVER_ENV] = before


def require_tool(name: str) -> str:
    """Path of a Debian peer tool; .ci/run installs them, so a missing one is a setup error."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run (it apt-get installs dcmtk, orthanc, dicom3tools)")
    return path


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) where it exists, else Debian's `docker-compose` (v1); None: neither."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data missing at {SHARED_DATA}")
    return SHARED_DATA
