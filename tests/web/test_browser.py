"""The console in headless Debian chromium (Playwright): log in, dashboard, a series with its
findings and overlay image, retry a dead letter, upload a series and watch its job finish; audit
tables that fit the window; a dashboard left open that turns a destination to its warning state when
the PACS goes down. Screenshots go to the test's tmp dir; the series page and the dashboard become
docs/screenshots/console.png and dashboard.png for the README when missing or
DICOMNODE_UPDATE_SCREENSHOTS=1 is set."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.node.helpers import StoreSCP, storescu
from tests.web.conftest import PASSWORD, TOKEN, USER, WebNode, new_series_copy, start_node, wait_for
from tests.web.test_destinations import deliveries_of, upload

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
README_SHOT = REPO_ROOT / "docs" / "screenshots" / "console.png"
README_DASHBOARD = REPO_ROOT / "docs" / "screenshots" / "dashboard.png"
WINDOW = 1280  # px: the viewport below; no table may make the page wider


@pytest.fixture
def page(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": WINDOW, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


def test_console_in_a_browser(page: Any, secure_node: WebNode, secure_series: dict[str, Any], phantom_files: list[Path],
                              tmp_path: Path) -> None:
    uid = secure_series["uid"]
    page.set_default_timeout(20_000)

    page.goto(secure_node.base + "/")
    assert "/login" in page.url
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert page.locator("p.error").inner_text() == "Wrong user name or password."
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(secure_node.base + "/")
    assert page.locator("h1").inner_text() == "Dashboard"
    assert int(page.locator("#dead-letters").inner_text()) >= 1
    assert "test-nodule-model" in page.locator("#model").inner_text()
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    # the same study sent again by the PACS: 120 duplicates, one line in the series' story
    storescu(secure_node.node.settings.node.port, phantom_files * 6, calling="ORTHANC")
    page.click("header nav >> text=Series")
    page.click(f'a[href="/series/{uid}"]')
    page.wait_for_url(f"**/series/{uid}")
    findings = page.locator("#findings tbody tr")
    assert findings.count() == 1 and "4A" in findings.first.inner_text()
    # issue 11: type, mean diameter, solid component, Lung-RADS, Brock risk and the model score named as such
    row = findings.first
    assert row.locator("td.f-type").inner_text() == "part-solid cavitary"  # its cavity beside its type
    assert (row.locator("td.f-mean").inner_text(), row.locator("td.f-solid").inner_text()) == ("9.5", "6.5")
    assert (row.locator("td.f-lung-rads").inner_text(), row.locator("td.f-brock").inner_text()) == ("4A", "8%")
    brock = page.locator("#findings thead th", has_text="Brock risk")
    assert "McWilliams" in (brock.get_attribute("title") or "")
    assert page.locator("#findings thead th", has_text="model score (phantom-trained weights)").count() == 1
    assert page.locator("#exam-lung-rads").inner_text() == "4AS"  # moderate coronary calcium: S suggested
    assert (page.locator("#exam-coronary-calcium").inner_text()
            == "moderate, Agatston-equivalent 154 (non-gated CT; 4 lesions)")
    assert page.locator("#exam-s-modifier").inner_text().startswith(
        "Lung-RADS S suggested for moderate coronary artery calcification (Agatston-equivalent 154")
    assert "3-month LDCT" in page.locator("#exam-recommendation").inner_text()
    assert page.locator("#exam-laa950").inner_text() == "LAA-950 3.2% of lung volume; lung volume 4870 ml; image noise 18 HU"
    assert "Missing from the DICOM header: age." in page.locator("#exam-missing").inner_text()
    # the findings table fits the 1280 px window (issue 13: it was 3050 px wide)
    assert page.locator("#findings").evaluate("t => t.scrollWidth") <= 1280
    overlay = page.locator("img.overlay").first
    overlay.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay.element_handle())
    assert overlay.evaluate("img => img.naturalWidth") == 64
    duplicates = page.locator('#series-events tr[data-event="INSTANCE_DUPLICATE"]')
    assert duplicates.count() == 1 and duplicates.first.locator("td.what").inner_text().startswith(
        "120 duplicate instances from ORTHANC, ")
    assert page.locator('#job-events tr[data-event="JOB_DONE"]').count() == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW  # the whole series page fits
    page.screenshot(path=str(tmp_path / "series.png"), full_page=True)

    page.goto(secure_node.base + "/dead-letters")
    first = page.locator("button.retry").first
    delivery = first.get_attribute("data-delivery")
    first.click()
    page.wait_for_url(f"**/dead-letters?retried={delivery}")
    assert f"Re-queued: {delivery}" in page.locator("p.ok").inner_text()
    page.screenshot(path=str(tmp_path / "dead-letters.png"), full_page=True)

    # upload a new series through the form and watch the page poll its job to the end
    files = new_series_copy(phantom_files, tmp_path / "upload")
    page.goto(secure_node.base + "/upload")
    page.set_input_files("input[name=files]", [str(f) for f in files])
    page.click("form[action=\"/upload\"] button[type=submit]")
    assert page.locator("#upload-summary").inner_text().startswith(f"{len(files)} instance(s) stored")
    page.wait_for_selector("#upload-progress tr[data-state=done]", timeout=120_000)
    assert "suspicious" in page.locator("#upload-progress .job-state").inner_text()
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)

    with secure_node.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        actions = c.get("/api/events", params={"status": "ADMIN_ACTION"}).json()
    assert any(a["delivery_id"] == int(delivery) and a["message"].startswith(f"{USER} re-queued") for a in actions)

    # issue 13: every audit table fits the window; the id opens the row's own page
    for subject in ("associations", "instances", "series", "jobs", "findings", "deliveries", "events", "dead-letters"):
        page.goto(f"{secure_node.base}/audit?subject={subject}")
        if page.locator("#audit-rows").count():
            assert page.locator("#audit-rows").evaluate("t => t.scrollWidth") <= WINDOW, subject
        assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW, subject
    page.goto(f"{secure_node.base}/audit?subject=findings")
    page.locator("#audit-rows td.c-id a").first.click()
    assert page.locator("#audit-row th", has_text="center_x_mm").count() == 1

    for name in ("dashboard.png", "series.png", "dead-letters.png", "upload.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    update_readme_picture(tmp_path / "series.png", README_SHOT)


def update_readme_picture(shot: Path, readme: Path) -> None:
    # only on request (or when missing), so test runs leave the tree clean
    if not readme.exists() or os.environ.get("DICOMNODE_UPDATE_SCREENSHOTS"):
        readme.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, readme)


@pytest.fixture
def live_pacs_node(tmp_path: Path) -> Any:
    # a dashboard that refreshes every second; deliveries wait for the PACS instead of giving up at once
    web = start_node(tmp_path / "node", require_login=False, web_extra="dashboard_refresh_s = 1", max_attempts=5)
    pacs = StoreSCP(tmp_path / "pacs", port=web.node.settings.destinations["PACS"].port).start()
    yield web, pacs
    pacs.stop()
    web.node.stop()


def test_dashboard_turns_to_warning_without_reload(page: Any, live_pacs_node: Any, phantom_files: list[Path],
                                                   tmp_path: Path) -> None:
    """Issue 13: the page was open before the PACS went down; it shows the failing destination by itself."""
    web, pacs = live_pacs_node
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(20_000)
    with web.client() as c:
        first = upload(c, new_series_copy(phantom_files, tmp_path / "first"))
        deliveries_of(c, first, lambda d: d["state"] == "delivered", "the results to reach the PACS")
    page.goto(web.base + "/")
    row = page.locator('#destination-health tr[data-destination="PACS"]')
    assert row.get_attribute("data-state") == "ok" and row.locator('[data-field="pending"]').inner_text() == "0"
    page.evaluate("() => { window.openedBefore = true; }")  # gone if the page reloads

    pacs.stop()
    with web.client() as c:
        second = upload(c, new_series_copy(phantom_files, tmp_path / "second"))
        waiting = deliveries_of(c, second, lambda d: d["state"] == "pending" and d["attempts"] >= 1,
                                "a failed attempt to the stopped PACS")
    page.wait_for_selector('#destination-health tr[data-destination="PACS"][data-state="failing"]', timeout=60_000)
    assert page.evaluate("window.openedBefore") is True  # the same page: no reload
    assert "warn-row" in (row.get_attribute("class") or "")
    badge = row.locator('[data-field="state"]')
    assert badge.inner_text() == "failing"
    assert badge.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(254, 228, 226)"  # styled, not only worded
    wait_for(lambda: row.locator('[data-field="pending"]').inner_text() == str(len(waiting)), 30, "the pending count")
    assert "no association" in (row.locator('[data-field="last_error_text"]').get_attribute("title") or "")
    assert row.locator('[data-field="last_failure_at"]').inner_text() != ""
    # the latest series table follows too: the series sent while the page was open is listed first
    page.wait_for_selector(f'#recent-series tbody tr:first-child a[href="/series/{second}"]')
    assert page.locator("#recent-series tbody tr").count() == 2
    assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW  # the dashboard fits the window too
    page.screenshot(path=str(tmp_path / "dashboard-failing.png"), full_page=True)

    row.locator("button.echo").click()  # the C-ECHO button: a POST with the page's CSRF token
    page.wait_for_url("**/?echo=*")
    assert " failed: " in page.locator("#echo-result").inner_text()
    assert not violations, violations
    update_readme_picture(tmp_path / "dashboard-failing.png", README_DASHBOARD)
