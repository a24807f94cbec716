"""deploy/: compose, Prometheus, Grafana, Dockerfile, systemd unit and example config are consistent."""
from __future__ import annotations

import configparser
import json
import re
import subprocess

import pytest

from dicomnode.config import load_settings
from dicomnode.process.pipelines import known_pipeline
from tests.conftest import REPO_ROOT, compose_command
from tests.web.conftest import WebNode

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed")
DEPLOY = REPO_ROOT / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_and_mounted_files_exist() -> None:
    spec = compose()
    assert set(spec["services"]) == {"node", "orthanc", "ohif", "prometheus", "grafana"}
    assert (REPO_ROOT / spec["services"]["node"]["build"]["dockerfile"]).is_file()
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    orthanc = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    assert orthanc["DicomWeb"]["Enable"] is True and orthanc["DicomWeb"]["Root"] == "/dicom-web/"


def test_docker_compose_config() -> None:
    compose_cmd = compose_command()
    if compose_cmd is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed (.ci/run installs docker-compose)")
    result = subprocess.run([*compose_cmd, "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, cwd=DEPLOY, check=False)
    assert result.returncode == 0, result.stderr


def test_example_node_config_is_valid_and_matches_prometheus() -> None:
    settings = load_settings(DEPLOY / "node.toml")
    assert all(known_pipeline(r.pipeline) for r in settings.routes)
    assert settings.web.host == "0.0.0.0"  # reachable in the container, so a login/token is required
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"node:{settings.web.port}"]
    assert job["authorization"]["credentials"] in settings.web.api_tokens
    assert "dicomnode/node.example.toml" in (DEPLOY / "node.toml").read_text()


def test_grafana_dashboard_uses_real_metrics(open_node: WebNode) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "dicomnode.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    with open_node.client() as c:
        exposed = c.get("/metrics").text
    for name in sorted({m for e in exprs for m in re.findall(r"dicomnode_[a-z_]+", e)}):
        assert re.search(rf"^{name}[{{ ]", exposed, re.MULTILINE), f"dashboard uses {name}, which /metrics does not expose"
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["datasources"][0]["uid"]}


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+cudnn", text, re.MULTILINE)
    assert "tensorrt" in text.lower() and ".[gpu" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    health = re.search(r"^HEALTHCHECK .*\n\s+CMD .*(http://127\.0\.0\.1:8080(\S+))", text, re.MULTILINE)
    assert health and health.group(2) == "/health/live"
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "dicomnode.service")
    service = unit["Service"]
    assert service["ExecStart"].split()[:2] == ["/opt/dicomnode/bin/dicomnode", "serve"]
    assert service["User"] not in ("root", "0") and service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
