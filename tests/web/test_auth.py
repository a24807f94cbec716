"""Access control on a node that requires a login: sessions, tokens, CSRF, audited logins."""
from __future__ import annotations

import re

import httpx
import pytest

from dicomnode.config import WebSettings
from dicomnode.web.auth import Auth, is_loopback
from tests.web.conftest import PASSWORD, TOKEN, USER, WebNode

HTML = {"Accept": "text/html"}


def login_page_csrf(client: httpx.Client, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def log_in(client: httpx.Client, password: str = PASSWORD, next_url: str = "/") -> httpx.Response:
    token = login_page_csrf(client)
    return client.post("/login", data={"username": USER, "password": password, "csrf_token": token, "next": next_url})


def audit(node: WebNode, name: str) -> list[dict]:
    with node.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        return c.get("/api/events", params={"status": name}).json()


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("")


def test_login_required_off_loopback(open_node: WebNode) -> None:
    db = open_node.node.db
    assert Auth(WebSettings(host="0.0.0.0"), db).required
    assert not Auth(WebSettings(host="127.0.0.1"), db).required
    assert Auth(WebSettings(host="127.0.0.1", require_login=True), db).required


@pytest.mark.parametrize("path", ["/", "/series", "/audit", "/dead-letters", "/upload", "/series/1.2.3/report", "/docs"])
def test_pages_redirect_to_login(secure_node: WebNode, path: str) -> None:
    with secure_node.client(headers=HTML) as c:
        response = c.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("path", ["/api/series", "/api/stats", "/api/events", "/metrics", "/api/dead-letters",
                                  "/openapi.json"])
def test_api_needs_token_or_session(secure_node: WebNode, path: str) -> None:
    with secure_node.client() as c:
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_health_is_public(secure_node: WebNode) -> None:
    with secure_node.client() as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health/live").status_code == 200


def test_login_failure_is_audited(secure_node: WebNode) -> None:
    with secure_node.client(headers=HTML) as c:
        response = log_in(c, password="wrong")
        assert response.status_code == 401 and "Wrong user name or password" in response.text
        assert c.get("/").status_code == 303
    failed = audit(secure_node, "ADMIN_LOGIN_FAILED")
    assert failed and failed[0]["message"].startswith(f"failed login for '{USER}'")


def test_login_without_csrf_is_refused(secure_node: WebNode) -> None:
    with secure_node.client(headers=HTML) as c:
        c.get("/login")
        response = c.post("/login", data={"username": USER, "password": PASSWORD})
        assert response.status_code == 403
        assert c.get("/").status_code == 303


def test_login_session_csrf_and_logout(secure_node: WebNode, secure_series: dict) -> None:
    with secure_node.client(headers=HTML) as c:
        response = log_in(c, next_url="/dead-letters")
        assert response.status_code == 303 and response.headers["location"] == "/dead-letters"
        page = c.get("/dead-letters")
        assert page.status_code == 200 and f"{USER}" in page.text
        assert c.get("/api/series").status_code == 200  # the session works for the API too
        ids = re.findall(r'data-delivery="(\d+)"', page.text)
        assert ids
        # a logged-in session is not enough for a POST: the CSRF token must come along
        assert c.post("/dead-letters/retry", data={"delivery_id": ids[0]}).status_code == 403
        assert c.post(f"/api/dead-letters/{ids[0]}/retry").status_code == 403
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        assert c.post("/dead-letters/retry", data={"delivery_id": ids[0], "csrf_token": token}).status_code == 303
        assert c.post("/logout", data={"csrf_token": token}).status_code == 303
        assert c.get("/").status_code == 303
    logins = audit(secure_node, "ADMIN_LOGIN")
    assert logins and logins[0]["message"].startswith(f"{USER} logged in from 127.0.0.1")
    actions = audit(secure_node, "ADMIN_ACTION")
    assert any(a["message"].startswith(f"{USER} re-queued delivery {ids[0]}") for a in actions)


def test_token_post_needs_no_csrf(secure_node: WebNode, secure_series: dict) -> None:
    with secure_node.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        response = c.post("/api/dead-letters/retry")
        assert response.status_code == 200
    actions = audit(secure_node, "ADMIN_ACTION")
    assert any(a["message"].startswith("token:test") and "all dead letters" in a["message"] for a in actions)


def test_login_never_redirects_off_site(secure_node: WebNode) -> None:
    with secure_node.client(headers=HTML) as c:
        response = log_in(c, next_url="//evil.example/steal")
        assert response.status_code == 303 and response.headers["location"] == "/"


def test_dashboard_refresh_does_not_keep_an_idle_session_alive(secure_node: WebNode) -> None:
    """The dashboard polls /api/stats with X-Dicomnode-Background: 1; a screen left open must still be
    logged out after web.session_idle_minutes (30) without a user's request."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from storage.models import WebSession

    def last_seen(session_id: int) -> datetime:
        with secure_node.node.db.session() as s:
            seen = s.execute(select(WebSession.last_seen_at).where(WebSession.id == session_id)).scalar_one()
        return seen if seen.tzinfo else seen.replace(tzinfo=UTC)

    with secure_node.client(headers=HTML) as c:
        assert log_in(c).status_code == 303
        idle_since = datetime.now(UTC) - timedelta(minutes=29)
        with secure_node.node.db.session() as s:  # this login's session, idle for 29 of its 30 minutes
            row = s.execute(select(WebSession).where(WebSession.username == USER)
                            .order_by(WebSession.id.desc()).limit(1)).scalar_one()
            row.last_seen_at, session_id = idle_since, row.id
        for _ in range(3):
            assert c.get("/api/stats", headers={"X-Dicomnode-Background": "1"}).status_code == 200
        assert last_seen(session_id) == idle_since  # the polls were answered but did not count as activity
        assert c.get("/api/stats").status_code == 200  # a user's own request does
        assert last_seen(session_id) > idle_since + timedelta(minutes=28)
