"""Fixtures for node tests: a node process with a test pipeline, and a storescp PACS."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.helpers import NodeProcess, StoreSCP, free_port


def node_config(pacs_port: int | None = None, *, extra: str = "", route_extra: str = "",
                stable: float = 1.0, pipeline: str = "tests.node.pipelines:summary_pipeline") -> str:
    """A config that routes every CT series to the small test pipeline and on to the PACS."""
    destination = f"""
[destinations.PACS]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
""" if pacs_port else ""
    return f"""
[series]
stable_seconds = {stable}
poll_seconds = 0.2
[sender]
backoff_initial_s = 0.5
backoff_max_s = 2
poll_seconds = 0.2
max_attempts = 4
[jobs]
poll_seconds = 0.2
[web]
enabled = false
[[routes]]
name = "all-ct"
pipeline = "{pipeline}"
destinations = [{'"PACS"' if pacs_port else ''}]
{route_extra}
[routes.match]
modality = ["CT"]
{destination}
{extra}
"""


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs").start()
    yield scp
    scp.stop()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    nodes: list[NodeProcess] = []

    def make(config_text: str, name: str = "node", **kwargs) -> NodeProcess:
        node = NodeProcess(tmp_path / name, config_text, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def pacs_port() -> int:
    return free_port()
