"""The node's identity where an admin looks (issue 14): the console's nodes page, GET /api/nodes,
the per-node /metrics gauges, and the node id on the job and delivery rows it worked on."""
from __future__ import annotations

from typing import Any

from tests.web.conftest import WebNode
from tests.web.test_metrics import scrape, value


def test_nodes_page_api_and_metrics_show_this_node(open_node: WebNode, open_series: dict[str, Any]) -> None:
    me = open_node.node.node_id
    with open_node.client() as c:
        page = c.get("/nodes")
        rows = c.get("/api/nodes").json()
        jobs = c.get("/api/jobs", params={"series": open_series["uid"]}).json()
        deliveries = c.get("/api/deliveries", params={"series": open_series["uid"]}).json()
    assert page.status_code == 200 and 'href="/nodes"' in page.text
    assert f'data-node="{me}"' in page.text and "(this node)" in page.text
    (row,) = rows
    assert row["node_id"] == me and row["state"] == "running" and row["engine"] == "auto"
    assert row["jobs_running"] == 0 and row["heartbeat_age_s"] < open_node.node.settings.node.lease_s
    # who ran the job and who tried the deliveries
    assert [j["node_id"] for j in jobs] == [me] and deliveries and {d["node_id"] for d in deliveries} == {me}
    samples = scrape(open_node)
    assert value(samples, "dicomnode_node_up", node_id=me) == 1
    assert value(samples, "dicomnode_node_jobs_running", node_id=me) == 0
    assert value(samples, "dicomnode_node_heartbeat_age_seconds", node_id=me) < open_node.node.settings.node.lease_s
