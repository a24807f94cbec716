"""Start the peers a benchmark compares against: the node, dcmtk storescp and Orthanc."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class Peer:
    name = "peer"
    ae_title = "PEER"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch the peer and return once it listens on self.port."""
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


class StoreScpPeer(Peer):
    name = "dcmtk storescp"
    ae_title = "STORESCP"
    extra_args: list[str] = []

    def start(self) -> None:
        out = self.workdir / "out"
        out.mkdir(parents=True)
        self.proc = subprocess.Popen(["storescp", *self.extra_args, "-aet", self.ae_title, "-od", str(out), "--accept-all",
                                      str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        wait_port(self.port, self.proc, self.name)


class StoreScpForkPeer(StoreScpPeer):
    """storescp with a child process per association: dcmtk's answer to several senders at once."""

    name = "dcmtk storescp --fork"
    extra_args = ["--fork"]


class OrthancPeer(Peer):
    name = "Orthanc"
    ae_title = "ORTHANC"

    def start(self) -> None:
        self.workdir.mkdir(parents=True)
        config = {
            "Name": "bench", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "DicomAet": self.ae_title, "DicomPort": self.port,
            "HttpPort": free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(["Orthanc", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        wait_port(self.port, self.proc, self.name)


class NodePeer(Peer):
    name = "dicomnode"
    ae_title = "DICOMNODE"

    @property
    def audit_db(self) -> Path:
        """The node's SQLite audit database (the default under --data-dir)."""
        return self.workdir / "data" / "audit.sqlite"

    def start(self) -> None:
        self.workdir.mkdir(parents=True)
        config = self.workdir / "node.toml"
        # no routes: the benchmark measures taking data in (fsync + audit), not analysis
        config.write_text('routes = []\n[web]\nenabled = false\n[series]\nstable_seconds = 3600\n')
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config), "--data-dir",
             str(self.workdir / "data"), "--port", str(self.port), "--ae-title", self.ae_title, "--log-level", "warning"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, self.name)


def wait_healthy(proc: subprocess.Popen[bytes], web_port: int, timeout: float = 300.0) -> None:
    """Until the node's /health answers 200 (the model is loaded), as a running node would be when a study comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:  # 503 while loading, or not listening yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the node was not ready within {timeout:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the node stops its receivers and loops), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
