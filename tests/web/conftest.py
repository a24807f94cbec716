"""Fixtures for console tests: real nodes in this process (web port 0), phantom CT files to upload."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.config import load_settings
from dicomnode.cli.served import ServedNode as Node
from dicomnode.core.passwords import hash_password
from tests.node.helpers import free_port, wait_for  # wait_for: also imported from here by web tests


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every console test is marked `one_receiver` (tests/conftest.py): receiving is not their subject."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.one_receiver)


USER, PASSWORD = "admin", "correct horse battery"
TOKEN = "test-api-token-0123456789abcdefghijk"  # 32+ characters: shorter tokens are refused
PIPELINE = "tests.web.pipelines:findings_pipeline"


def node_toml(require_login: bool, pacs_port: int, web_extra: str = "", max_attempts: int = 1) -> str:
    # the PACS port is closed: every delivery fails once and becomes a dead letter to retry (unless a
    # test starts a PACS there, or allows more attempts)
    users = f'users = {{ {USER} = "{hash_password(PASSWORD, iterations=1000)}" }}' if require_login else ""
    return f"""
[series]
stable_seconds = 0.3
poll_seconds = 0.1
[jobs]
poll_seconds = 0.1
[sender]
max_attempts = {max_attempts}
poll_seconds = 0.2
connect_timeout_s = 2
[web]
host = "127.0.0.1"
port = 0
require_login = {str(require_login).lower()}
min_free_disk_mb = 1
api_tokens = ["{TOKEN}"]
{users}
{web_extra}
[[routes]]
name = "all-ct"
pipeline = "{PIPELINE}"
destinations = ["PACS"]
[routes.match]
modality = ["CT"]
[destinations.PACS]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
"""


@dataclass
class WebNode:
    node: Node
    base: str

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30, **kwargs)


def start_node(root: Path, require_login: bool, web_extra: str = "", max_attempts: int = 1) -> WebNode:
    """web_extra: more [web] lines (limits, TLS) for nodes that test them; max_attempts: of each delivery."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "node.toml"
    config.write_text(node_toml(require_login, free_port(), web_extra, max_attempts))
    settings = load_settings(config, {"node.data_dir": root / "data", "node.port": free_port(), "node.host": "127.0.0.1",
                                      "node.min_free_disk_mb": 1})
    node = Node(settings)
    node.start()
    assert node.web is not None and node.web.port > 0
    return WebNode(node, f"http://127.0.0.1:{node.web.port}")


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from inference.phantom import write_phantom_series

    case = write_phantom_series(tmp_path_factory.mktemp("phantom"), 11, matrix=64, n_slices=20, n_nodules=1)
    return case.files


@pytest.fixture(scope="session")
def open_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    web = start_node(tmp_path_factory.mktemp("open-node"), require_login=False)
    yield web
    web.node.stop()


@pytest.fixture(scope="session")
def secure_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    web = start_node(tmp_path_factory.mktemp("secure-node"), require_login=True)
    yield web
    web.node.stop()


def upload_and_wait(client: httpx.Client, files: list[Path], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Upload through /api/upload and wait until the series' job is done and its deliveries are dead."""
    headers = dict(headers or {})
    if "Authorization" not in client.headers:  # a browser-style session needs the CSRF token
        headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
    response = client.post("/api/upload", files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in files],
                           headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    (uid,) = body["series"]

    def finished() -> dict[str, Any] | None:
        detail = client.get(f"/api/series/{uid}").json()
        jobs = detail["jobs"]
        assert not jobs or jobs[0]["state"] != "failed", jobs[0]
        dead = detail["deliveries"] and all(d["state"] == "dead" for d in detail["deliveries"])
        return detail if jobs and jobs[0]["state"] == "done" and dead else None

    detail = wait_for(finished, 90, f"series {uid} to be analysed and its deliveries to give up")
    return {"upload": body, "uid": uid, "detail": detail}


@pytest.fixture(scope="session")
def open_series(open_node: WebNode, phantom_files: list[Path]) -> dict[str, Any]:
    with open_node.client() as client:
        return upload_and_wait(client, phantom_files)


@pytest.fixture(scope="session")
def secure_series(secure_node: WebNode, phantom_files: list[Path]) -> dict[str, Any]:
    with secure_node.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        return upload_and_wait(client, phantom_files)


def new_series_copy(files: list[Path], out: Path) -> list[Path]:
    """The phantom again under new UIDs: a second series of the same study."""
    out.mkdir()
    series_uid = generate_uid()
    copies = []
    for path in files:
        ds = dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copies.append(out / path.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies
