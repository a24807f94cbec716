"""Issue 9, defect 2: 30 parallel wrong logins must not stall the console, and must be throttled.

A poller keeps asking /health/live while the logins go in, with a real PBKDF2 hash (390 000
iterations, about 0.4 s a check on this machine); every poll must be answered, none left to time out.
Its slowest answer (the issue asks for at most 1 s) is printed, not asserted: timings are measured by
`benchmarks/responsiveness.py` over several runs, not asserted on a noisy 2-core machine.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dicomnode.core.passwords import hash_password
from storage.models import Event
from tests.web.conftest import PASSWORD, USER, WebNode, start_node

HTML = {"Accept": "text/html"}
PARALLEL = 30
POLL_TIMEOUT_S = 5  # a poll not answered by then fails the test: the console stalled


@pytest.fixture
def node(tmp_path: Path) -> Iterator[WebNode]:
    web = start_node(tmp_path / "node", require_login=True)
    # the fixture's user has a cheap test hash; this test needs the real cost
    web.node.web.app.state.auth.sync_users({USER: hash_password(PASSWORD)})
    yield web
    web.node.stop()


def csrf(client: httpx.Client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)


def poll(base: str, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    """Ask /health/live until stopped; a time-out or a non-200 answer is a failure (a thread's own
    assert would be lost)."""
    with httpx.Client(base_url=base, timeout=POLL_TIMEOUT_S) as c:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status = c.get("/health/live").status_code
            except httpx.HTTPError as error:
                failures.append(repr(error))
                continue
            if status != 200:
                failures.append(f"status {status}")
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)


def test_parallel_wrong_logins_neither_stall_nor_pass(node: WebNode) -> None:
    clients = [node.client(headers=HTML) for _ in range(PARALLEL)]
    tokens = [csrf(c) for c in clients]
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(node.base, stop, latencies, failures))
    poller.start()
    time.sleep(0.3)
    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            answers = list(pool.map(lambda ct: ct[0].post("/login", data={
                "username": USER, "password": "wrong", "csrf_token": ct[1]}), zip(clients, tokens)))
        time.sleep(0.3)
    finally:
        stop.set()
        poller.join(60)
        for c in clients:
            c.close()
    statuses = [a.status_code for a in answers]
    print(f"web load: {len(latencies)} /health/live polls, slowest {max(latencies, default=0):.3f} s; "
          f"login answers {sorted(statuses)}")  # the figure for the record (pytest -s)
    assert not failures, f"/health/live not answered: {failures[:5]}"
    assert len(latencies) >= 5, f"the poller got only {len(latencies)} answers"
    free = node.node.settings.web.login_client_failures
    assert statuses.count(401) <= free and statuses.count(429) >= PARALLEL - free, statuses
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 429)
    with node.node.db.session() as s:
        throttled = list(s.execute(select(Event).where(Event.name == "ADMIN_LOGIN_THROTTLED")).scalars())
        failed = list(s.execute(select(Event).where(Event.name == "ADMIN_LOGIN_FAILED")).scalars())
    assert len(throttled) == 1 and throttled[0].details["key"] == "127.0.0.1"
    assert len(failed) == statuses.count(401)
    # another client (another loopback address) still logs in
    with httpx.Client(base_url=node.base, timeout=30, headers=HTML,
                      transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        response = other.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": csrf(other)})
        assert response.status_code == 303
        assert other.get("/api/session").json()["user"] == USER
