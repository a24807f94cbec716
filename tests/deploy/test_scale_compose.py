"""deploy/docker-compose.scale.yml: N nodes on one PostgreSQL and one shared spool, Triton, HAProxy.

The compose file cannot be started here (no Docker daemon, no GPU), so these tests check what a
`docker compose up` relies on: the service graph, volumes and ports agree with each other, with
deploy/node.toml as each node reads it (file + its DICOMNODE_* environment, through the node's own
config loader), with haproxy.cfg and with prometheus.scale.yml; and HAProxy's DICOM health check is
run by a real HAProxy against a real node, with dcmtk's storescu sending through the balancer.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import load_settings, unknown_env_vars
from tests.conftest import LIDC_SERIES, REPO_ROOT, compose_command
from tests.node.helpers import NodeProcess, free_port, port_open, storescu, wait_for

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed")
DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.scale.yml"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
NODE_TOML = DEPLOY / "node.toml"


def spec() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def nodes(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if re.fullmatch(r"node\d+", name)}


def substitute(value: str) -> str:
    """${VAR:-default} as compose fills it in when VAR is unset."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1), m.group(2)), value)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume or ./file) of a service's volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def node_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    env = {k: substitute(str(v)) for k, v in service["environment"].items()}
    assert unknown_env_vars(env) == [], "a node's environment sets something that is no dicomnode setting"
    for name in [n for n in os.environ if n.startswith("DICOMNODE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(NODE_TOML)


def haproxy_backend() -> tuple[list[tuple[str, str, int]], list[str]]:
    """(name, host, port) of each server of backend dicomnodes, and its tcp-check lines."""
    text = HAPROXY_CFG.read_text()
    backend = re.search(r"^backend dicomnodes\n(.*?)(?=^\S|\Z)", text, re.MULTILINE | re.DOTALL)
    assert backend, "haproxy.cfg has no backend dicomnodes"
    body = backend.group(1)
    servers = [(m[0], m[1], int(m[2])) for m in re.findall(r"^\s+server (\S+) ([\w.-]+):(\d+)", body, re.MULTILINE)]
    checks = re.findall(r"^\s+(tcp-check .*)$", body, re.MULTILINE)
    return servers, checks


# -- the service graph ----------------------------------------------------------------------------
def test_services_volumes_and_dependencies_are_consistent() -> None:
    s = spec()
    services = s["services"]
    expected = {"postgres", "triton", "model-export", "haproxy", "orthanc", "ohif", "prometheus", "grafana"}
    assert expected <= set(services)
    assert len(nodes(services)) >= 2
    declared = set(s["volumes"])
    for name, service in services.items():
        deps = service.get("depends_on", [])
        for dep in deps:
            assert dep in services, f"{name} depends on {dep}, which is no service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts volume {source}, which is not declared"
    host_ports = [p.split(":")[0] for service in services.values() for p in service.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {sorted(host_ports)}"
    # nodes wait for the database to accept connections (their migrations run at start)
    for name, node in nodes(services).items():
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert "healthcheck" in services["postgres"]


def test_triton_serves_what_model_export_writes_on_a_gpu() -> None:
    services = spec()["services"]
    triton, export = services["triton"], services["model-export"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    repository = re.search(r"--model-repository=(\S+)", " ".join(triton["command"]))
    assert repository, "tritonserver is started without --model-repository"
    assert export["command"][:2] == ["model", "export-triton"]
    written = export["command"][2]
    assert mounts(triton)[repository.group(1)] == mounts(export)[written], "Triton reads another volume"
    assert triton["depends_on"]["model-export"]["condition"] == "service_completed_successfully"
    for name in ("triton", "model-export"):  # the plan is built for, and run on, an NVIDIA GPU
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name


def test_every_node_reads_one_database_one_spool_and_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    services = spec()["services"]
    triton_ports = {p.split(":")[1] for p in services["triton"]["ports"]}
    seen: dict[str, set[Any]] = {k: set() for k in ("db", "spool", "outbox", "data", "host", "web")}
    for name, node in nodes(services).items():
        settings = node_settings(node, monkeypatch)
        node_mounts = mounts(node)
        assert settings.database_url.startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in settings.database_url
        for kind, path in (("spool", settings.spool_dir), ("outbox", settings.outbox_dir)):
            # under a mount of the one shared volume, the same path on every node
            mount = next((m for m in node_mounts if Path(path).is_relative_to(m)), None)
            assert mount and node_mounts[mount] == "shared", f"{name}: {kind} {path} is not on the shared volume"
            seen[kind].add(str(path))
        assert settings.inference.engine == "triton"
        triton = re.fullmatch(r"(?:grpc|http)://triton:(\d+)", settings.inference.triton_url or "")
        assert triton and triton.group(1) in triton_ports, f"{name}: {settings.inference.triton_url}"
        assert settings.node.port == 11112 and settings.web.port == 8080
        (web_published,) = [p for p in node["ports"] if p.endswith(f":{settings.web.port}")]
        seen["web"].add(web_published.split(":")[0])
        seen["db"].add(settings.database_url)
        seen["data"].add(node_mounts[str(settings.node.data_dir)])  # a volume of its own
        seen["host"].add(node["hostname"])
    n = len(nodes(services))
    assert len(seen["db"]) == len(seen["spool"]) == len(seen["outbox"]) == 1
    assert len(seen["data"]) == len(seen["host"]) == len(seen["web"]) == n


def test_single_node_compose_environment_is_accepted_by_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.yml's node too: its DICOMNODE_* defaults must be values the node starts with."""
    single = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["node"]
    settings = node_settings(single, monkeypatch)
    assert settings.node.port == 11112


def test_haproxy_balances_over_every_node_and_prometheus_scrapes_each(monkeypatch: pytest.MonkeyPatch) -> None:
    services = spec()["services"]
    node_names = set(nodes(services))
    settings = node_settings(services["node1"], monkeypatch)
    servers, checks = haproxy_backend()
    assert {name for name, _, _ in servers} == node_names
    assert all(host == name and port == settings.node.port for name, host, port in servers)
    text = HAPROXY_CFG.read_text()
    assert re.search(r"^defaults\n(?:.*\n)*?\s+mode tcp$", text, re.MULTILINE)
    bind = re.search(r"^frontend dicom\n\s+bind :(\d+)", text, re.MULTILINE)
    assert bind and f"{bind.group(1)}:{bind.group(1)}" in services["haproxy"]["ports"]
    default_server = re.search(r"^\s+default-server (.*)$", text, re.MULTILINE)
    assert default_server and " check " in f" {default_server.group(1)} ", "servers without a health check"
    # HAProxy queues what a node would refuse: its per-server limit leaves the node one slot for the check
    maxconn = re.search(r"\bmaxconn (\d+)", default_server.group(1))
    assert maxconn and int(maxconn.group(1)) < settings.node.max_associations
    assert checks[0] == "tcp-check connect" and "HAPROXY" in settings.security.allowed_calling_aes
    assert "haproxy/haproxy.cfg" in " ".join(services["haproxy"]["volumes"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus.scale.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "dicomnode")
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{n}:{settings.web.port}" for n in node_names}
    assert job["authorization"]["credentials"] in settings.web.api_tokens
    assert "./prometheus.scale.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_health_check_pdu_is_an_association_request_the_node_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    settings = node_settings(spec()["services"]["node1"], monkeypatch)
    _, checks = haproxy_backend()
    sends = [bytes.fromhex(c.split()[-1]) for c in checks if c.startswith("tcp-check send-binary")]
    assert len(sends) == 2 and sends[1] == bytes.fromhex("05000000000400000000")  # A-RELEASE-RQ
    rq = A_ASSOCIATE_RQ()
    rq.decode(sends[0])
    assert rq.called_ae_title == settings.node.ae_title and rq.calling_ae_title == "HAPROXY"
    (context,) = rq.presentation_context
    assert context.abstract_syntax == "1.2.840.10008.1.1" and context.transfer_syntax == ["1.2.840.10008.1.2"]


def test_docker_compose_config_and_haproxy_check_accept_the_files() -> None:
    compose_cmd = compose_command()
    if compose_cmd is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed "
                    "(.ci/run installs docker-compose)")
    result = subprocess.run([*compose_cmd, "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, cwd=DEPLOY, check=False)
    assert result.returncode == 0, result.stderr
    haproxy = shutil.which("haproxy") or (shutil.which("haproxy", path="/usr/sbin"))
    if haproxy:
        checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


# -- a real HAProxy with the deploy config in front of a real node -----------------------------------
NODE_ENV = {"DICOMNODE_NODE__HOST": "127.0.0.1", "DICOMNODE_WEB__ENABLED": "false", "DICOMNODE_ROUTES": "[]",
            "DICOMNODE_INFERENCE__ENGINE": "onnxruntime", "DICOMNODE_NODE__RECEIVE_PROCESSES": "1"}


@pytest.fixture(scope="module")
def deploy_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two nodes with deploy/node.toml (AE title, allowed callers), on loopback, no analysis, no console;
    the second one misconfigured: HAPROXY is not among its allowed calling AEs, so it refuses the check."""
    root = tmp_path_factory.mktemp("deploy-node")
    good = NodeProcess(root / "good", NODE_TOML.read_text(), env=NODE_ENV)
    refusing = NodeProcess(root / "refusing", NODE_TOML.read_text(),
                           env={**NODE_ENV, "DICOMNODE_SECURITY__ALLOWED_CALLING_AES": '["SCANNER"]'})
    try:
        good.start(wait=False)  # both start at once; then wait for each
        refusing.start()
        wait_for(lambda: port_open(good.port), 60, "the node to listen")
        yield good, refusing
    finally:
        good.stop()
        refusing.stop()


def local_haproxy_cfg(path: Path, port: int, stats_port: int, backends: dict[str, int]) -> None:
    """haproxy.cfg as deployed, but on loopback ports, with the servers at the given local ports and
    the check intervals short (what is tested is the check's sequence, not its period)."""
    text = HAPROXY_CFG.read_text()
    text = text.replace("bind :11112", f"bind 127.0.0.1:{port}").replace("bind :8404", f"bind 127.0.0.1:{stats_port}")
    text = re.sub(r"inter 30s fastinter 5s downinter 5s", "inter 300 fastinter 300 downinter 300", text)
    text = re.sub(r" resolvers docker", "", text)
    text = re.sub(r"^resolvers docker\n(?:[ \t]+.*\n)*", "", text, flags=re.MULTILINE)
    text = re.sub(r"^[ \t]+server .*\n", "", text, flags=re.MULTILINE)
    servers = "".join(f"    server {name} 127.0.0.1:{p}\n" for name, p in backends.items())
    text = text.replace("\n# the state of each node", servers + "\n# the state of each node")
    path.write_text(text)


def server_states(stats_port: int) -> dict[str, dict[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5) as answer:
        rows = csv.DictReader(io.StringIO(answer.read().decode().lstrip("# ")))
        return {r["svname"]: r for r in rows
                if r["pxname"] == "dicomnodes" and r["svname"] not in ("BACKEND", "FRONTEND")}


def test_real_haproxy_checks_a_real_node_and_forwards_storescu(deploy_nodes: tuple[NodeProcess, NodeProcess],
                                                               tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        pytest.skip("HAProxy is not installed (scripts/install.sh installs Debian's haproxy)")
    good, refusing = deploy_nodes
    port, stats_port = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    # node2 listens but refuses the association (A-ASSOCIATE-RJ); node3: nothing listens (a node that is down)
    local_haproxy_cfg(cfg, port, stats_port, {"node1": good.port, "node2": refusing.port, "node3": free_port()})
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def settled() -> dict[str, dict[str, str]] | None:
            try:
                states = server_states(stats_port)
            except OSError:
                return None
            done = (states.get("node1", {}).get("check_status") == "L7OK"
                    and all(states.get(n, {}).get("status") == "DOWN" for n in ("node2", "node3")))
            return states if done else None

        states = wait_for(settled, 60, "HAProxy to mark node1 up by its DICOM check, node2 and node3 down")
        assert states["node1"]["status"] == "UP"
        # a TCP check would have taken node2 for healthy: its port is open, its DICOM layer refuses
        assert states["node2"]["check_status"] == "L7RSP" and states["node3"]["check_status"] == "L4CON"
        files = sorted(LIDC_SERIES.iterdir())[:3]
        storescu(port, files)  # through the balancer: only node1 can take it
    finally:
        proc.terminate()
        proc.wait(20)
    assert len(good.audit("instances")) == 3
    # each check is an accepted association closed by a release; the newest (listed first) may still be
    # open, or cut off (aborted) when HAProxy was stopped in the middle of it
    states_seen = [a["state"] for a in good.audit("associations") if a["calling_ae"] == "HAPROXY"]
    assert "released" in states_seen and set(states_seen[1:]) <= {"released"}, states_seen
    assert states_seen[0] in ("released", "accepted", "aborted"), states_seen
    refused = [a["state"] for a in refusing.audit("associations") if a["calling_ae"] == "HAPROXY"]
    assert refused and set(refused) == {"rejected"}, refused
