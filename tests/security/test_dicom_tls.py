"""Issue 9, idle connections under TLS: the handshake must not run in the accept loop, where one
silent client kept every later peer out; a failed handshake is audited."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import require_tool
from tests.node.test_tls_e2e import _tls_config, pki  # noqa: F401  (pki is a fixture)
from tests.security.dicom_helpers import Audit, eventually, make_node  # noqa: F401  (make_node is a fixture)


def _echoscu(port: int, pki: dict[str, Path], key: str = "client") -> subprocess.CompletedProcess:  # noqa: F811
    return subprocess.run(
        [require_tool("echoscu"), "-aec", "DICOMNODE", "-to", "10", "-ta", "10", "+tls", str(pki[f"{key}_key"]),
         str(pki[f"{key}_crt"]), "+cf", str(pki["ca_crt"]), "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60)


def test_silent_client_does_not_block_tls_peers_and_failed_handshakes_are_audited(make_node, pki) -> None:  # noqa: F811
    node = make_node(_tls_config(pki))
    audit = Audit(node)
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as silent:  # never says hello
        ok = _echoscu(node.port, pki)
        assert ok.returncode == 0, f"a TLS peer was kept out by a silent connection: {ok.stderr[-500:]}"
        assert silent.recv(1) == b"", "the node closes it after node.idle_connection_timeout_s"
    assert eventually(lambda: audit.count("CONNECTION_CLOSED_IDLE") == 1)
    stranger = _echoscu(node.port, pki, key="stranger")
    assert stranger.returncode != 0
    assert eventually(lambda: audit.count("TLS_HANDSHAKE_FAILED") >= 1)
    assert audit.count("ECHO_RECEIVED") == 1
