"""Queued work starts when it is queued, not at the next poll: with job and sender polls of an hour,
a series still comes back from the PACS (the routing wakes the job worker, the finished job the sender)."""
from __future__ import annotations

import pytest

from tests.conftest import LIDC_SERIES
from tests.node.conftest import node_config
from tests.node.helpers import storescu, wait_for

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)


def test_job_and_delivery_start_without_waiting_for_a_poll(make_node, pacs):
    config = (node_config(pacs.port).replace("[jobs]\npoll_seconds = 0.2", "[jobs]\npoll_seconds = 3600")
              .replace("backoff_max_s = 2\npoll_seconds = 0.2", "backoff_max_s = 2\npoll_seconds = 3600"))
    assert config.count("poll_seconds = 3600") == 2
    node = make_node(config).start()
    storescu(node.port, sorted(p for p in LIDC_SERIES.iterdir() if p.is_file())[:8])
    # both loops made their first (empty) pass at start-up and now sleep for an hour: only a wake-up runs the job
    delivered = wait_for(lambda: [d for d in node.audit("deliveries") if d["state"] == "delivered"], 60, "a delivery")
    assert len(delivered) == 1
    jobs = node.audit("jobs")
    assert [j["state"] for j in jobs] == ["done"]
    assert len(pacs.files()) == 1
