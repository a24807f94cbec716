"""LocalTriton's start: one more try after the Python backend's known start-up abort, none after any other exit.

The abort (boost::interprocess::lock_exception, upstream triton-inference-server/server#8882) is intermittent and
cannot be provoked, so a stand-in process plays tritonserver here: it prints what the real one printed and aborts,
or serves the readiness endpoint. Everything else (the real server, its restart) is tests/inference/test_triton.py.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from inference.triton_local import KNOWN_START_ABORT, LocalTriton
from tests.node.helpers import free_port

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                reason="needs nvidia-pytriton (LocalTriton's environment): scripts/install.sh installs it")

STAND_IN = r'''
import http.server, os, sys
starts, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(starts, "a") as f:
    f.write("x")
if message and len(open(starts).read()) == 1:  # the first start aborts with `message`
    print(message, flush=True)
    os.abort()

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Ready).serve_forever()
'''


def _stand_in(tmp_path: Path, message: str) -> tuple[LocalTriton, Path]:
    script = tmp_path / "tritonserver.py"
    script.write_text(STAND_IN)
    starts = tmp_path / "starts"

    class StandIn(LocalTriton):
        def command(self) -> list[str]:
            return [sys.executable, str(script), str(starts), str(self.http_port), message]

    return StandIn(tmp_path / "repo", free_port(), free_port(), free_port(), workdir=tmp_path / "work"), starts


def test_the_known_start_up_abort_is_tried_once_more(tmp_path: Path) -> None:
    server, starts = _stand_in(tmp_path, f"terminate called after throwing an instance of '{KNOWN_START_ABORT}'")
    try:
        server.start(timeout=30)
        assert server.ready()
        assert starts.read_text() == "xx"
    finally:
        server.stop()


def test_any_other_exit_at_start_fails_at_once_with_the_log(tmp_path: Path) -> None:
    server, starts = _stand_in(tmp_path, "error: creating server: Invalid argument - --model-repository must be set")
    with pytest.raises(RuntimeError, match="Invalid argument - --model-repository must be set"):
        server.start(timeout=30)
    assert starts.read_text() == "x"
