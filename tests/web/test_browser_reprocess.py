"""Re-run a series from its page in headless Debian chromium (issue 13): log in, click "Re-run analysis",
see the queued job, and find the new job superseding the old one, audited with the user's name."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from storage.models import Event, Job
from tests.web.conftest import PASSWORD, TOKEN, USER, WebNode, start_node, upload_and_wait, wait_for
from tests.web.test_browser import page  # noqa: F401  (the chromium fixture)


@pytest.fixture
def analysed_node(tmp_path: Path) -> Iterator[tuple[WebNode, str]]:
    from inference.phantom import write_phantom_series

    web = start_node(tmp_path / "node", require_login=True)
    try:
        case = write_phantom_series(tmp_path / "phantom", 13, matrix=64, n_slices=20, n_nodules=1)
        with web.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield web, upload_and_wait(client, case.files)["uid"]
    finally:
        web.node.stop()


def test_reprocess_button_on_the_series_page(page: Any, analysed_node: tuple[WebNode, str], tmp_path: Path) -> None:  # noqa: F811
    web, uid = analysed_node
    with web.node.db.session() as s:
        (first,) = s.execute(select(Job.id)).scalars().all()
    page.set_default_timeout(20_000)
    page.goto(f"{web.base}/series/{uid}")
    page.wait_for_url("**/login**")
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/series/{uid}")
    assert page.locator("#jobs tbody tr").count() == 1

    page.click("#reprocess-button")
    page.wait_for_url(f"**/series/{uid}?reprocessed=*")
    notice = page.locator("#reprocess-queued").inner_text()
    assert notice.startswith("Re-run queued as job ")
    job_id = int(notice.removeprefix("Re-run queued as job ").split(";")[0])
    page.screenshot(path=str(tmp_path / "reprocess.png"), full_page=True)

    def finished() -> bool:
        with web.node.db.session() as s:
            job = s.get(Job, job_id)
            return job is not None and job.state == "done"

    wait_for(finished, 60, "the re-run from the console to finish")
    page.reload()
    rows = page.locator("#jobs tbody tr")
    assert rows.count() == 2 and rows.first.locator("td").first.inner_text() == f"{job_id} (re-run of {first})"
    with web.node.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.supersedes_job_id == first
        event = s.execute(select(Event).where(Event.code == 507)).scalar_one()
        assert event.details is not None
        assert (event.details["user"], event.details["via"], event.job_id) == (USER, "console", job_id)
        assert event.message.startswith(f"re-run requested by {USER} from 127.0.0.1 (console)")
