"""/metrics: numbers come from the audit database and move when a series is processed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.web.conftest import WebNode, new_series_copy, upload_and_wait


def scrape(node: WebNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with node.client() as c:
        response = c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_metrics_move_after_a_series(open_node: WebNode, open_series: dict[str, Any], phantom_files: list[Path],
                                     tmp_path: Path) -> None:
    before = scrape(open_node)
    with open_node.client() as c:
        upload_and_wait(c, new_series_copy(phantom_files, tmp_path / "copy"))
    after = scrape(open_node)

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("dicomnode_instances_received_total") == 20
    assert delta("dicomnode_bytes_received_total") > 20 * 64 * 64 * 2
    assert delta("dicomnode_series_completed_total") == 1
    assert delta("dicomnode_jobs", state="done") == 1
    assert delta("dicomnode_deliveries", state="dead") >= 3
    assert value(after, "dicomnode_dead_letters") == value(after, "dicomnode_deliveries", state="dead")
    for stage in ("receive_to_complete", "queue_wait", "job", "inference", "encoding", "delivery"):
        assert delta("dicomnode_stage_seconds_count", stage=stage) >= (0 if stage == "delivery" else 1), stage
        assert value(after, "dicomnode_stage_seconds_bucket", stage=stage, le="+Inf") == \
            value(after, "dicomnode_stage_seconds_count", stage=stage)
    # the pipeline reported 0.4 s of inference per job
    assert abs(delta("dicomnode_stage_seconds_sum", stage="inference") - 0.4) < 1e-9
    assert value(after, "dicomnode_model_info", configured_engine="auto", mode="whole", engine="test-cpu",
                 name="test-nodule-model", version="0.0-test", pipelines="tests.web.pipelines:findings_pipeline") == 1
    assert value(after, "dicomnode_spool_free_bytes") > 0
    assert value(after, "dicomnode_queue_depth") == value(after, "dicomnode_jobs", state="queued")


def test_each_node_has_its_own_registry(open_node: WebNode, secure_node: WebNode) -> None:
    assert open_node.node.web.app.state.registry is not secure_node.node.web.app.state.registry
