"""`dicomnode user add` and `dicomnode token create` put only hashes into a real config file (keeping its
comments), and a real node then lets that user log in and that token call the API, and nobody else."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicomnode.config import load_settings
from dicomnode.cli.served import ServedNode as Node
from tests.conftest import REPO_ROOT
from tests.node.helpers import free_port

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)

PASSWORD = "a long and new password"
CONFIG = """# site config: these comments must survive
[node]
host = "127.0.0.1"  # loopback only
[web]
# the console asks for a login even on loopback
require_login = true
host = "127.0.0.1"
port = 0
[series]
stable_seconds = 1.0  # kept as written
"""


def dicomnode(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DICOMNODE_")}
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          input=stdin, timeout=120, env={**env, "PYTHONPATH": str(REPO_ROOT)})


def add_user(config: Path, name: str, password: str) -> subprocess.CompletedProcess:
    return dicomnode("user", "add", name, "--config", str(config), "--password-stdin", stdin=password + "\n")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(CONFIG)
    path.chmod(0o640)
    return path


def test_user_add_writes_a_hash_and_keeps_the_file(config: Path) -> None:
    result = add_user(config, "alice", PASSWORD)
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    for line in CONFIG.splitlines():  # every line and comment is still there
        assert line in text
    assert PASSWORD not in text + result.stdout + result.stderr
    stored = tomllib.loads(text)["web"]["users"]["alice"]
    assert stored.startswith("pbkdf2_sha256$")
    assert config.stat().st_mode & 0o777 == 0o640  # the rewrite keeps the file's permissions
    # a second run changes that user's password only
    assert add_user(config, "bob", PASSWORD + "-bob").returncode == 0
    assert add_user(config, "alice", PASSWORD + "-changed").returncode == 0
    users = tomllib.loads(config.read_text())["web"]["users"]
    assert set(users) == {"alice", "bob"} and users["alice"] != stored
    assert load_settings(config).web.users == users  # and the node accepts what was written


def test_user_add_refuses_bad_input_and_print_leaves_the_file(config: Path) -> None:
    before = config.read_text()
    short = add_user(config, "alice", "short")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad_name = add_user(config, "alice]\n[node", PASSWORD)
    assert bad_name.returncode == 2
    no_tty = dicomnode("user", "add", "alice", "--config", str(config))  # stdin is not a terminal
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    printed = dicomnode("user", "add", "carol", "--print", "--config", str(config), "--password-stdin", stdin=PASSWORD)
    assert printed.returncode == 0 and re.match(r'^users = \{ "carol" = "pbkdf2_sha256\$', printed.stdout)
    assert PASSWORD not in printed.stdout + printed.stderr
    assert config.read_text() == before


def test_token_create_prints_the_token_once_and_stores_its_hash(config: Path) -> None:
    result = dicomnode("token", "create", "--config", str(config))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 32
    text = config.read_text()
    assert token not in text and "# site config: these comments must survive" in text
    (stored,) = tomllib.loads(text)["web"]["api_tokens"]
    assert re.fullmatch(r"sha256\$[0-9a-f]{64}", stored)
    check = dicomnode("config", "check", "--config", str(config))
    assert check.returncode == 0 and "PLAIN TEXT" not in check.stderr and stored not in check.stdout
    second = dicomnode("token", "create", "--config", str(config)).stdout.strip()
    assert second != token and len(tomllib.loads(config.read_text())["web"]["api_tokens"]) == 2


# -- the node honours what the commands wrote ------------------------------------------------------
@pytest.fixture
def node_with_secrets(tmp_path: Path, config: Path) -> Iterator[tuple[str, str]]:
    assert add_user(config, "alice", PASSWORD).returncode == 0
    token = dicomnode("token", "create", "--config", str(config)).stdout.strip()
    settings = load_settings(config, {"node.data_dir": tmp_path / "data", "node.port": free_port(),
                                      "node.min_free_disk_mb": 1, "web.min_free_disk_mb": 1})
    node = Node(settings)
    node.start()
    try:
        assert node.web is not None
        yield f"http://127.0.0.1:{node.web.port}", token
    finally:
        node.stop()


def _log_in(client: httpx.Client, user: str, password: str) -> httpx.Response:
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": csrf, "next": "/"})


def test_node_accepts_the_written_user_and_token_and_refuses_others(node_with_secrets: tuple[str, str]) -> None:
    base, token = node_with_secrets
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/api/stats").status_code == 401
        assert _log_in(client, "alice", PASSWORD + "x").status_code == 401
        assert client.get("/api/stats").status_code == 401
        assert _log_in(client, "alice", PASSWORD).status_code == 303
        assert client.get("/api/stats").status_code == 200
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/api/stats", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        assert client.get("/api/stats", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        # the stored hash itself is not a token
        stored = "sha256$" + hashlib.sha256(token.encode()).hexdigest()
        assert client.get("/api/stats", headers={"Authorization": f"Bearer {stored}"}).status_code == 401

