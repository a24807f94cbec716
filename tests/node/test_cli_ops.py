"""Issue 13, the command line day to day: --version, exit codes that say whether anything was done,
skipped files named in our words, echo/send with an AE title of their own, serve --host, config
errors and unknown environment variables named, and no third-party chatter in a job's log at info."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import LIDC_SERIES, REPO_ROOT
from tests.node.conftest import node_config
from tests.node.helpers import wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


def dicomnode(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("DICOMNODE_")}
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**clean, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def test_version_flag_prints_the_package_version() -> None:
    for flag in ("--version", "-V"):
        result = dicomnode(flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"dicomnode {version('dicomnode')}"


def test_send_with_nothing_to_send_exits_3_and_names_each_file_in_our_words(tmp_path: Path) -> None:
    folder = tmp_path / "not-images"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.dcm").write_bytes(b"")
    ds = dcmread(sorted(LIDC_SERIES.iterdir())[0])
    del ds.SOPClassUID
    ds.save_as(folder / "no-class.dcm")
    # nothing here can be sent, so no association is tried: the port may be closed
    result = dicomnode("send", "PACS@127.0.0.1:9", str(folder))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "sent 0, failed 0, skipped 3" in result.stdout and "nothing sent" in result.stderr
    for name in ("notes.txt", "empty.dcm"):
        assert f"{folder / name}: not a DICOM file (no 'DICM' marker" in result.stderr, result.stderr
    assert f"{folder / 'no-class.dcm'}: a DICOM file without a SOP Class UID (0008,0016)" in result.stderr
    assert "force=True" not in result.stderr and "Traceback" not in result.stderr
    help_text = dicomnode("send", "--help").stdout
    assert "3 nothing to send" in help_text and "DICOMNODE_SCU" in help_text


def test_retry_says_whether_anything_was_done(tmp_path: Path) -> None:
    """No dead letters: nothing to do (3); a delivery that does not exist: an error (2)."""
    from storage.db import Database

    (tmp_path / "data").mkdir()
    Database(f"sqlite:///{tmp_path / 'data' / 'audit.sqlite'}").migrate()  # a node's database, nothing in it
    data = ("--data-dir", str(tmp_path / "data"))
    nothing = dicomnode("retry", "--all-dead", *data)
    assert nothing.returncode == 3 and "nothing to retry: no dead letters" in nothing.stdout, nothing
    unknown = dicomnode("retry", "--delivery", "42", *data)
    assert unknown.returncode == 2 and "no delivery 42 that can be sent again" in unknown.stdout + unknown.stderr, unknown


def test_unknown_environment_variable_is_named_with_the_nearest_setting(tmp_path: Path) -> None:
    result = dicomnode("config", "check", "--data-dir", str(tmp_path),
                       env={"DICOMNODE_NODE_PORT": "11113", "DICOMNODE_SECURTY__ALLOWED_HOSTS": '["10.0.0.1"]'})
    assert result.returncode == 0, result.stderr
    assert "DICOMNODE_NODE_PORT is not a dicomnode setting and is ignored; did you mean DICOMNODE_NODE__PORT?" \
        in result.stderr
    assert "DICOMNODE_SECURTY__ALLOWED_HOSTS is not a dicomnode setting and is ignored; did you mean " \
        "DICOMNODE_SECURITY__ALLOWED_HOSTS?" in result.stderr
    valid = dicomnode("config", "check", "--data-dir", str(tmp_path), env={"DICOMNODE_NODE__PORT": "11113"})
    assert valid.returncode == 0 and "not a dicomnode setting" not in valid.stderr


def test_config_errors_name_their_source_and_the_example_command(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nae_titel = "X"\n')
    typo = dicomnode("config", "check", "--config", str(config))
    assert typo.returncode == 2
    assert f"node.ae_titel: unknown key; did you mean node.ae_title? (`dicomnode config example` shows every " \
        f"valid key) (from config file {config})" in typo.stderr
    assert "node.example.toml" not in typo.stderr
    # a value below the key the error is about: the variable, not "the built-in defaults"
    below = dicomnode("config", "check", env={"DICOMNODE_ROUTES__0__NAME": "x"})
    assert below.returncode == 2 and "routes:" in below.stderr
    assert "(from environment variable DICOMNODE_ROUTES__0__NAME)" in below.stderr and "defaults" not in below.stderr
    env = dicomnode("config", "check", env={"DICOMNODE_NODE__PORT": "70000"})
    assert env.returncode == 2 and "node.port" in env.stderr and "environment variable DICOMNODE_NODE__PORT" in env.stderr
    flag = dicomnode("serve", "--host", "not a host!", "--data-dir", str(tmp_path / "d"))
    assert flag.returncode == 2 and "node.host: 'not a host!' is not an IP address or a host name (from flag --host)" \
        in flag.stderr


def _listens(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def test_serve_host_send_calling_ae_and_a_quiet_job_log(make_node, tmp_path: Path) -> None:
    """A node bound to 127.0.0.1 only; `send` calls as DICOMNODE_SCU; the job (whose results highdicom
    encodes) leaves no highdicom lines in the log at info."""
    from inference.phantom import write_phantom_series

    case = write_phantom_series(tmp_path / "phantom", 11, matrix=64, n_slices=20, n_nodules=1)
    node = make_node(node_config(pipeline="tests.web.pipelines:findings_pipeline", stable=0.5),
                     extra_args=["--host", "127.0.0.1"]).start()
    assert _listens("127.0.0.1", node.port)
    assert not _listens("127.0.0.2", node.port), "--host 127.0.0.1 must not listen on other addresses"
    sent = dicomnode("send", f"DICOMNODE@127.0.0.1:{node.port}", *map(str, case.files))
    assert sent.returncode == 0 and "sent 20, failed 0" in sent.stdout, sent.stderr
    (association,) = node.audit("associations")
    assert association["calling_ae"] == "DICOMNODE_SCU"
    (job,) = wait_for(lambda: [j for j in node.audit("jobs") if j["state"] == "done"], 120, "the job to finish")
    assert job["verdict"] == "suspicious"
    log = node.log.read_text()
    assert "on 127.0.0.1 port" in log
    assert "logger=dicomnode" in log  # the node's own lines are there
    chatter = [line for line in log.splitlines()
               if "logger=highdicom" in line or ("level=info" in line and "logger=pynetdicom" in line)]
    assert not chatter, "\n".join(chatter[:10])
