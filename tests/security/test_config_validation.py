"""Every bad configuration value is refused by `config check` and `serve` alike, with the same message,
naming the key and where the value came from (file, environment variable, flag), never echoing a secret."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

AE_17 = "SEVENTEEN_CHARS_X"  # one over the PS3.5 limit of 16
# the network listeners are never reached (every case fails validation first), but stay on loopback
QUIET = '[node]\nhost = "127.0.0.1"\n[web]\nenabled = false\n'


def dicomnode(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("DICOMNODE_")}
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**clean, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


@dataclass
class Case:
    toml: str  # the config file (QUIET is added unless the case sets [node] or [web] itself)
    key: str  # the key the error must name
    source: str  # "file", or the environment variable / flag that must be named
    env: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # serve-only flags
    secret: str | None = None  # must never appear in any output


DESTINATION = '[[routes]]\nname = "r"\ndestinations = ["PACS"]\n[destinations.PACS]\n'
CASES = {
    "bad-cidr": Case('[security]\nallowed_hosts = ["10.0.0.0/8", "10.0.0.300/8"]\n', "security.allowed_hosts[1]", "file"),
    "ae-node": Case(f'[node]\nhost = "127.0.0.1"\nae_title = "{AE_17}"\n[web]\nenabled = false\n', "node.ae_title", "file"),
    "ae-allowed": Case(f'[security]\nallowed_calling_aes = ["{AE_17}"]\n', "security.allowed_calling_aes[0]", "file"),
    "ae-route": Case(f'[[routes]]\nname = "r"\n[routes.match]\ncalling_ae = ["OK", "{AE_17}"]\n',
                     "routes[0].match.calling_ae[1]", "file"),
    "ae-destination": Case(DESTINATION + f'ae_title = "{AE_17}"\nhost = "127.0.0.1"\nport = 104\n',
                           "destinations.PACS.ae_title", "file"),
    "ae-backslash": Case('[security]\nallowed_calling_aes = ["A\\\\B"]\n', "security.allowed_calling_aes[0]", "file"),
    "ae-all-spaces": Case('[security]\nallowed_calling_aes = ["    "]\n', "security.allowed_calling_aes[0]", "file"),
    "host-node": Case('[node]\nhost = "10.0.0.300"\n[web]\nenabled = false\n', "node.host", "file"),
    "host-web": Case('[node]\nhost = "127.0.0.1"\n[web]\nenabled = false\nhost = "bad host!"\n', "web.host", "file"),
    "host-destination": Case(DESTINATION + 'ae_title = "PACS"\nhost = "-pacs..example"\nport = 104\n',
                             "destinations.PACS.host", "file"),
    "port-file": Case('[node]\nhost = "127.0.0.1"\nport = 70000\n[web]\nenabled = false\n', "node.port", "file"),
    "port-env": Case("", "node.port", "DICOMNODE_NODE__PORT", env={"DICOMNODE_NODE__PORT": "abc"}),
    "hosts-env": Case("", "security.allowed_hosts[0]", "DICOMNODE_SECURITY__ALLOWED_HOSTS",
                      env={"DICOMNODE_SECURITY__ALLOWED_HOSTS": '["10.0.0.300/8"]'}),
    "port-flag": Case("", "node.port", "--port", flags=["--port", "70000"]),
    "ae-flag": Case("", "node.ae_title", "--ae-title", flags=["--ae-title", AE_17]),
    "database-url": Case('[node]\nhost = "127.0.0.1"\ndatabase_url = "nosuchdb://dicomnode:Pw-0f-the-DB-9@db/x"\n'
                         '[web]\nenabled = false\n', "node.database_url", "file", secret="Pw-0f-the-DB-9"),
    "tls-missing-files": Case('[tls]\nenabled = true\ncert_file = "/nonexistent/node.crt"\nkey_file = "/nonexistent/node.key"\n'
                              'require_client_cert = false\n', "tls", "file"),
    "plain-password": Case('[web]\nenabled = false\nusers = { admin = "correct horse battery staple" }\n',
                           "web.users", "file", secret="correct horse battery staple"),
    "short-token": Case('[web]\nenabled = false\napi_tokens = ["s3cr3t-tok"]\n', "web.api_tokens", "file",
                        secret="s3cr3t-tok"),
    "repetitive-token": Case('[web]\nenabled = false\napi_tokens = ["' + "ab" * 20 + '"]\n', "web.api_tokens", "file",
                             secret="ab" * 20),
    "short-session-secret": Case("", "web.session_secret", "DICOMNODE_WEB__SESSION_SECRET", secret="sesame-42",
                                 env={"DICOMNODE_WEB__SESSION_SECRET": "sesame-42"}),
}


def _config(tmp_path: Path, case: Case) -> Path:
    text = case.toml
    if "[node]" not in text and "[web]" not in text:
        text = QUIET + text
    elif "[node]" not in text:
        text = '[node]\nhost = "127.0.0.1"\n' + text
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _error_line(stderr: str, key: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip().startswith(f"{key}:")]
    assert lines, f"no error line for {key} in:\n{stderr}"
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_value_is_refused_naming_key_and_source(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    config = _config(tmp_path, case)
    serve = dicomnode("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), *case.flags, env=case.env)
    runs = [serve]
    if not case.flags:  # `config check` takes no serve flags
        runs.append(dicomnode("config", "check", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                              env=case.env))
    expected_source = f"(from config file {config})" if case.source == "file" else (
        f"(from flag {case.source})" if case.source.startswith("--") else f"(from environment variable {case.source})")
    for result in runs:
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        line = _error_line(result.stderr, case.key)
        assert line.endswith(expected_source), line
        if case.secret is not None:
            assert case.secret not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # serve stopped before creating anything
    if len(runs) == 2:
        assert runs[0].stderr == runs[1].stderr  # one validation, one message


def test_flag_error_blames_the_flag_not_the_file(tmp_path: Path) -> None:
    config = _config(tmp_path, Case("", "", ""))
    result = dicomnode("serve", "--config", str(config), "--port", "70000", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert str(config) not in result.stderr and "node.port: Input should be less than or equal to 65535" in result.stderr


def test_plain_text_password_names_the_command_that_makes_a_hash(tmp_path: Path) -> None:
    config = _config(tmp_path, CASES["plain-password"])
    result = dicomnode("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert "plain-text passwords are refused" in result.stderr and "dicomnode user add admin" in result.stderr


def test_send_to_with_a_long_ae_title_is_a_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path, Case("", "", ""))
    result = dicomnode("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                       "--send-to", "PAC\\S@127.0.0.1:104")
    assert result.returncode == 2 and "--send-to" in result.stderr and "Traceback" not in result.stderr


# -- a valid config: what `config check` prints ----------------------------------------------------
def test_config_check_never_prints_secrets(tmp_path: Path) -> None:
    from dicomnode.core.passwords import hash_password, hash_token

    password_hash = hash_password("a long test password", iterations=1000)
    plain_token = "plain-token-" + "0123456789abcdefghijklmnopqrstuv"
    hashed = hash_token("the-hashed-token-0123456789abcdefghijklmnop")
    session_secret = "session-secret-0123456789abcdefghijklmnop"
    config = tmp_path / "node.toml"
    config.write_text(f'''[node]
host = "127.0.0.1"
database_url = "postgresql+psycopg://dicomnode:Db-Pass-Word-77@db/dicomnode"
[web]
users = {{ admin = "{password_hash}" }}
api_tokens = ["{plain_token}", "{hashed}"]
session_secret = "{session_secret}"
''')
    result = dicomnode("config", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    everything = result.stdout + result.stderr
    for secret in (password_hash, plain_token, hashed, session_secret, "Db-Pass-Word-77"):
        assert secret not in everything
    assert "postgresql+psycopg://dicomnode:***@db/dicomnode" in result.stdout  # the rest of the URL is shown
    # the plain token is accepted (old deployments) with a loud warning; the hashed one is not mentioned
    assert "SECURITY WARNING: web.api_tokens [0] stored in PLAIN TEXT" in result.stderr
    assert "[1]" not in result.stderr


def test_open_dicom_bind_warns_in_config_check_and_serve(tmp_path: Path) -> None:
    open_config = tmp_path / "open.toml"
    open_config.write_text('[node]\nhost = "0.0.0.0"\n[web]\nenabled = false\n')
    check = dicomnode("config", "check", "--config", str(open_config))
    assert check.returncode == 0 and "accepts ANY calling AE from ANY host" in check.stderr
    # serve says it at start-up; an unwritable spool stops it before anything listens
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    open_config.write_text(open_config.read_text().replace("[node]\n", f'[node]\nspool_dir = "{blocked}/spool"\n'))
    serve = dicomnode("serve", "--config", str(open_config), "--data-dir", str(tmp_path / "d"))
    assert serve.returncode == 2 and "not writable" in serve.stderr
    assert "SECURITY WARNING" in serve.stderr and "accepts ANY calling AE from ANY host" in serve.stderr
    for allow in ('[security]\nallowed_hosts = ["10.1.2.3"]\n', '[security]\nallowed_calling_aes = ["PACS"]\n'):
        guarded = tmp_path / "guarded.toml"
        guarded.write_text('[node]\nhost = "0.0.0.0"\n[web]\nenabled = false\n' + allow)
        result = dicomnode("config", "check", "--config", str(guarded))
        assert result.returncode == 0 and "SECURITY WARNING" not in result.stderr


def test_allowed_hosts_are_parsed_once_by_the_settings(tmp_path: Path) -> None:
    from dicomnode.config import load_settings

    config = tmp_path / "node.toml"
    config.write_text('[security]\nallowed_hosts = ["10.1.2.3", "192.168.7.9/16", "::1"]\n')
    settings = load_settings(config)
    assert [str(n) for n in settings.security.networks] == ["10.1.2.3/32", "192.168.0.0/16", "::1/128"]


def test_config_file_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    result = dicomnode("config", "check", "--config", str(tmp_path))  # a directory
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(tmp_path) in result.stderr
