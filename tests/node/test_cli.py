"""What an admin types: config errors, start-up errors, echo, send, audit formats, --send-to."""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import LIDC_SERIES, REPO_ROOT
from tests.node.conftest import node_config
from tests.node.helpers import storescu, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


def dicomnode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_config_typo_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nae_titel = "X"\nport = 70000\n[[routes]]\nname = "r"\ndestinations = ["NOWHERE"]\n')
    result = dicomnode("serve", "--config", str(bad), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "node.ae_titel: unknown key" in result.stderr
    assert "node.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_route_naming_an_unknown_destination_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[routes]]\nname = "r"\ndestinations = ["NOWHERE"]\n')
    result = dicomnode("config", "check", "--config", str(bad))
    assert result.returncode == 2 and "'NOWHERE', which is not in [destinations]" in result.stderr


def test_busy_port_and_unwritable_spool_are_clear_startup_errors(tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = dicomnode("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2 and f"port {port}" in result.stderr and "already in use" in result.stderr
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    config = tmp_path / "c.toml"
    config.write_text(f'[node]\nspool_dir = "{blocked}/spool"\n[web]\nenabled = false\n')
    result = dicomnode("serve", "--config", str(config), "--data-dir", str(tmp_path / "d2"))
    assert result.returncode == 2 and "not writable" in result.stderr and str(blocked) in result.stderr
    assert "Traceback" not in result.stderr


def test_echo_send_and_audit_formats(make_node):
    node = make_node(node_config()).start()
    echo = dicomnode("echo", f"DICOMNODE@127.0.0.1:{node.port}")
    assert echo.returncode == 0 and "status 0x0000" in echo.stdout
    wrong = dicomnode("echo", f"NOTME@127.0.0.1:{node.port}")
    assert wrong.returncode == 2 and "rejected" in wrong.stderr
    files = sorted(LIDC_SERIES.iterdir())[:5]
    sent = dicomnode("send", f"DICOMNODE@127.0.0.1:{node.port}", *map(str, files))
    assert sent.returncode == 0 and "sent 5, failed 0" in sent.stdout
    args = ["--config", str(node.config), "--data-dir", str(node.data_dir)]
    as_json = json.loads(dicomnode("audit", "instances", "--format", "json", *args).stdout)
    assert len(as_json) == 5
    as_csv = list(csv.DictReader(io.StringIO(dicomnode("audit", "instances", "--format", "csv", *args).stdout)))
    assert {r["sop_instance_uid"] for r in as_csv} == {r["sop_instance_uid"] for r in as_json}
    table = dicomnode("audit", "associations", *args).stdout
    assert "DICOMNODE" in table and "released" in table
    since_future = json.loads(dicomnode("audit", "instances", "--since", "2999-01-01", "--format", "json", *args).stdout)
    assert since_future == []
    recent = json.loads(dicomnode("audit", "instances", "--since", "1h", "--format", "json", *args).stdout)
    assert len(recent) == 5
    bad_since = dicomnode("audit", "instances", "--since", "yesterday", *args)
    assert bad_since.returncode == 2 and "--since 'yesterday'" in bad_since.stderr
    by_series = json.loads(dicomnode("audit", "series", "--series", as_json[0]["series_instance_uid"][:20],
                                     "--format", "json", *args).stdout)
    assert len(by_series) == 1


def test_send_to_flag_delivers_results_without_a_destinations_section(make_node, pacs):
    config = node_config()  # a route with no destinations
    node = make_node(config, extra_args=["--send-to", f"PACS@127.0.0.1:{pacs.port}"]).start()
    storescu(node.port, sorted(LIDC_SERIES.iterdir())[:20])
    delivered = wait_for(lambda: [d for d in node.audit("deliveries") if d["state"] == "delivered"], 60, "delivery")
    assert delivered[0]["destination"] == "send-to-1" and delivered[0]["port"] == pacs.port
    assert len(pacs.files()) == 1
