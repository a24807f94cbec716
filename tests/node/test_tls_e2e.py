"""DICOM TLS: dcmtk storescu +tls with a CA-signed client certificate gets in; without one it does not;
the node sends results to a TLS destination (storescp +tls)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import LIDC_SERIES, require_tool
from tests.node.conftest import node_config
from tests.node.helpers import free_port, port_open, storescu, wait_for


def _openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA, a node certificate, a client certificate it signed, and a stranger's self-signed one."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name in ("node", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"))
        ext = d / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-out", str(d / f"{name}.crt"), "-extfile", str(ext))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
             "-keyout", str(d / "stranger.key"), "-out", str(d / "stranger.crt"))
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def _tls_config(pki: dict[str, Path], pacs_port: int | None = None) -> str:
    tls = f"""
[tls]
enabled = true
cert_file = "{pki['node_crt']}"
key_file = "{pki['node_key']}"
ca_file = "{pki['ca_crt']}"
require_client_cert = true
"""
    config = node_config(pacs_port, extra=tls)
    if pacs_port:
        config = config.replace('port = %d\n' % pacs_port, 'port = %d\ntls = true\n' % pacs_port)
    return config


def test_tls_client_signed_by_the_ca_is_accepted_and_a_stranger_is_not(make_node, pki):
    node = make_node(_tls_config(pki)).start()
    f = sorted(LIDC_SERIES.iterdir())[:2]
    tls_ok = ["+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca_crt"])]
    storescu(node.port, f, extra=tls_ok)
    rows = node.audit("instances")
    assert len(rows) == 2
    assert node.audit("associations")[0]["tls"] is True

    stranger = ["+tls", str(pki["stranger_key"]), str(pki["stranger_crt"]), "+cf", str(pki["ca_crt"])]
    refused = storescu(node.port, sorted(LIDC_SERIES.iterdir())[2:3], extra=stranger, check=False)
    assert refused.returncode != 0
    plain = storescu(node.port, sorted(LIDC_SERIES.iterdir())[3:4], check=False)
    assert plain.returncode != 0
    assert len(node.audit("instances")) == 2, "nothing from an unauthenticated peer is stored"


def test_results_go_to_a_tls_destination(make_node, pki, tmp_path):
    pacs_port = free_port()
    out = tmp_path / "tls-pacs"
    out.mkdir()
    scp = subprocess.Popen(
        [require_tool("storescp"), "-aet", "PACS", "-od", str(out), "--accept-all", "+tls", str(pki["client_key"]),
         str(pki["client_crt"]), "+cf", str(pki["ca_crt"]), str(pacs_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(pacs_port), 20, "TLS storescp")
        node = make_node(_tls_config(pki, pacs_port)).start()
        tls_ok = ["+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca_crt"])]
        storescu(node.port, sorted(LIDC_SERIES.iterdir())[:20], extra=tls_ok)
        wait_for(lambda: [d for d in node.audit("deliveries") if d["state"] == "delivered"], 60, "TLS delivery")
        assert len([p for p in out.iterdir() if p.is_file()]) == 1
    finally:
        scp.terminate()
        scp.wait(10)
