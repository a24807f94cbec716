"""Real processes for end-to-end tests: the node, dcmtk's storescu (scanner) and storescp (PACS)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import REPO_ROOT, require_tool

PYTHON = sys.executable


def cli_in_process(*argv: str) -> subprocess.CompletedProcess:
    """`dicomnode ARGV...` run by the CLI's entry point (`dicomnode.cli.main`) in this process, stdout and
    stderr captured: the same code without a new interpreter's 1.5-3 s of start-up and imports. For tests
    that call a command many times; the commands themselves are also run as real processes elsewhere."""
    from dicomnode.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return subprocess.CompletedProcess(["dicomnode", *argv], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class NodeProcess:
    """`dicomnode serve` as a separate process, so a test can kill -9 it."""

    def __init__(self, data_dir: Path, config_text: str = "", port: int | None = None, ae_title: str = "DICOMNODE",
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.ae_title = ae_title
        self.config = data_dir.parent / f"{data_dir.name}.toml"
        self.config.write_text(config_text)
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    def start(self, wait: bool = True) -> "NodeProcess":
        cmd = [PYTHON, "-m", "dicomnode.cli", "serve", "--config", str(self.config), "--data-dir", str(self.data_dir),
               "--port", str(self.port), "--ae-title", self.ae_title, *self.extra_args]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **self.env}
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 60, "the node to listen")
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        receivers = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        # its receiver processes exit when they see it gone; until then they hold the port (the
        # listening socket they inherited), and a start() right after could not bind it. Wait for
        # the processes themselves, then for the port to refuse.
        _, alive = psutil.wait_procs(receivers, timeout=30)
        assert not alive, f"the killed node's receivers {[p.pid for p in alive]} did not exit"
        wait_for(lambda: not port_open(self.port), 30, "the killed node's receivers to leave the port")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log_file", None):
            self._log_file.close()

    def audit(self, what: str, *args: str) -> list[dict[str, Any]]:
        """`dicomnode audit WHAT --format json` on this node's database, run in this process: the same
        CLI code without a new interpreter's 1.5-3 s of start-up, which the polling loops paid per turn
        (tests/web/test_audit_cli.py and tests/security/test_cli_output.py run the real command)."""
        result = cli_in_process("audit", what, "--config", str(self.config), "--data-dir", str(self.data_dir),
                                "--format", "json", *args)
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout)


def storescu(port: int, files: list[Path] | Path, called: str = "DICOMNODE", calling: str = "SCANNER",
             extra: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """dcmtk storescu; +sd scans a folder. Returns the finished process (stderr has dcmtk's log)."""
    tool = require_tool("storescu")
    paths = [files] if isinstance(files, Path) else files
    cmd = [tool, "-aet", calling, "-aec", called, *(extra or [])]
    if any(p.is_dir() for p in paths):
        cmd += ["+sd", "+r"]
    cmd += ["127.0.0.1", str(port), *map(str, paths)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def storescu_profile(folder: Path, sop_class_uid: str, transfer_syntax_uid: str) -> list[str]:
    """storescu options proposing exactly this SOP class in this one transfer syntax, so a
    compressed file goes over the wire as it is instead of being decompressed by storescu."""
    cfg = folder / f"storescu-{transfer_syntax_uid}.cfg"
    cfg.write_text(
        "[[TransferSyntaxes]]\n[Own]\n"
        f"TransferSyntax1 = {transfer_syntax_uid}\n"
        "[[PresentationContexts]]\n[OwnContexts]\n"
        f"PresentationContext1 = {sop_class_uid}\\Own\n"
        "[[Profiles]]\n[Own]\nPresentationContexts = OwnContexts\n"
    )
    return ["-xf", str(cfg), "Own"]


class StoreSCP:
    """dcmtk storescp playing the PACS that receives results."""

    def __init__(self, out_dir: Path, port: int | None = None, ae_title: str = "PACS") -> None:
        self.out_dir = out_dir
        self.port = port or free_port()
        self.ae_title = ae_title
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tool = require_tool("storescp")
        self.proc = subprocess.Popen(
            [tool, "-aet", self.ae_title, "-od", str(self.out_dir), "--accept-all", "-uf", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"},
        )
        wait_for(lambda: port_open(self.port), 20, "storescp to listen")
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
