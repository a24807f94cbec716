"""Issue 9, web console: throttled logins, revocable sessions, body and zip limits, Host allow-list,
security headers, Secure cookies, local /docs, redirects. Real nodes, httpx and raw sockets."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from storage.models import Event, Instance, WebSession
from tests.web.conftest import PASSWORD, TOKEN, USER, WebNode, start_node
from tests.web.http_raw import chunked, exchange, post_head
from tests.web.test_auth import log_in, login_page_csrf
from tests.web.test_browser import page  # noqa: F401  (the Playwright page fixture)

HTML = {"Accept": "text/html"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TEMPLATES = Path(__file__).resolve().parents[2] / "dicomnode" / "web" / "templates"
LIMITS = """
max_upload_mb = 4
max_request_kb = 16
max_zip_uncompressed_mb = 1
max_zip_members = 50
max_zip_ratio = 100
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    """A login node of its own: throttling state must not leak into the shared nodes' tests."""
    web = start_node(tmp_path_factory.mktemp("sec-node"), require_login=True, web_extra=LIMITS)
    yield web
    web.node.stop()


def events(web: WebNode, name: str) -> list[Event]:
    with web.node.db.session() as s:
        return list(s.execute(select(Event).where(Event.name == name).order_by(Event.id)).scalars())


def instance_count(web: WebNode) -> int:
    with web.node.db.session() as s:
        return s.execute(select(func.count(Instance.id))).scalar_one()


def client_from(web: WebNode, address: str, **kwargs: object) -> httpx.Client:
    """A client with its own loopback source address: another 'machine' for per-client throttling."""
    return httpx.Client(base_url=web.base, timeout=30, transport=httpx.HTTPTransport(local_address=address),
                        **kwargs)  # type: ignore[arg-type]


def cookie_payload(value: str) -> dict:
    """The JSON inside starlette's signed session cookie (base64 payload before the signature)."""
    data = value.split(".")[0]
    return json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))


def upload_dir(web: WebNode) -> Path:
    return Path(web.node.settings.node.data_dir).resolve() / "web-upload"


def multipart(files: list[tuple[str, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# -- defect 6: sessions end at logout and when idle -----------------------------------------
def test_logout_revokes_the_session_cookie(node: WebNode) -> None:
    with client_from(node, "127.0.0.20", headers=HTML) as c:
        assert log_in(c).status_code == 303
        cookie = c.cookies["dicomnode_session"]
        sid = cookie_payload(cookie)["sid"]
        with node.node.db.session() as s:  # only a hash of the id is stored
            hashes = set(s.execute(select(WebSession.token_hash)).scalars())
        assert hashlib.sha256(sid.encode()).hexdigest() in hashes and sid not in hashes
        token = login_page_csrf(c, "/upload")
        assert c.post("/logout", data={"csrf_token": token}).status_code == 303
    with node.client(headers=HTML, cookies={"dicomnode_session": cookie}) as replay:
        response = replay.get("/")
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
        assert replay.get("/api/series").status_code == 401
    assert any(e.message.startswith(f"{USER} logged out from 127.0.0.20") for e in events(node, "ADMIN_LOGOUT"))


def test_idle_session_ends(node: WebNode) -> None:
    with client_from(node, "127.0.0.21", headers=HTML) as c:
        assert log_in(c).status_code == 303
        assert c.get("/api/series").status_code == 200
        sid = cookie_payload(c.cookies["dicomnode_session"])["sid"]
        idle = datetime.now(UTC) - timedelta(minutes=node.node.settings.web.session_idle_minutes + 1)
        with node.node.db.session() as s:
            s.execute(update(WebSession).where(WebSession.token_hash == hashlib.sha256(sid.encode()).hexdigest())
                      .values(last_seen_at=idle))
        assert c.get("/api/series").status_code == 401
        assert c.get("/").status_code == 303


def test_a_changed_password_ends_open_sessions(node: WebNode) -> None:
    from dicomnode.core.passwords import hash_password

    auth = node.node.web.app.state.auth
    with client_from(node, "127.0.0.25", headers=HTML) as c:
        assert log_in(c).status_code == 303 and c.get("/api/series").status_code == 200
        auth.sync_users({USER: hash_password(PASSWORD, iterations=1000)})  # node.toml changed, node restarted
        assert c.get("/api/series").status_code == 401
        assert log_in(c).status_code == 303  # the (same) password still works for a new session


# -- defect 2: throttled logins ----------------------------------------------------------------
def test_failed_logins_from_one_client_are_throttled(node: WebNode) -> None:
    free = node.node.settings.web.login_client_failures
    with client_from(node, "127.0.0.30", headers=HTML) as c:
        statuses = [log_in(c, password=f"wrong-{i}").status_code for i in range(free)]
        assert statuses == [401] * free
        refused = [log_in(c, password="wrong") for _ in range(10)]
        assert {r.status_code for r in refused} == {429}
        assert int(refused[0].headers["retry-after"]) >= 1 and "try again in" in refused[0].text
        # while throttled even the right password is not checked
        assert log_in(c).status_code == 429
    throttled = [e for e in events(node, "ADMIN_LOGIN_THROTTLED") if e.details.get("key") == "127.0.0.30"]
    assert len(throttled) == 1, "one audit row per delay window, not one per refused request"
    assert f"after {free} failed" in throttled[0].message
    failed = [e for e in events(node, "ADMIN_LOGIN_FAILED") if e.details.get("client") == "127.0.0.30"]
    assert len(failed) == free  # refused attempts were never checked
    # another client logs in as usual, and its success is not held up by the first one's failures
    with client_from(node, "127.0.0.31", headers=HTML) as other:
        assert log_in(other).status_code == 303


def test_failed_logins_for_one_user_are_throttled_across_clients(node: WebNode) -> None:
    free = node.node.settings.web.login_user_failures
    victim = "victim-user"
    for i in range(free):
        with client_from(node, f"127.0.1.{i + 1}", headers=HTML) as c:
            token = login_page_csrf(c)
            assert c.post("/login", data={"username": victim, "password": "x", "csrf_token": token}).status_code == 401
    with client_from(node, "127.0.1.200", headers=HTML) as c:
        token = login_page_csrf(c)
        response = c.post("/login", data={"username": victim, "password": "x", "csrf_token": token})
        assert response.status_code == 429
    assert any(e.details.get("by") == "user" and e.details.get("key") == victim
               for e in events(node, "ADMIN_LOGIN_THROTTLED"))


# -- defect 3: bodies --------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/upload", "/upload"])
def test_unauthenticated_upload_is_refused_before_the_body(node: WebNode, path: str) -> None:
    gib = 2**30
    # 1 MiB of a declared 1 GiB, then the client stalls: an answer must come without the rest
    status, head = exchange(node.node.web.port, post_head(path, gib, HTML if path == "/upload" else None),
                            (b"\0" * 65536 for _ in range(16)), timeout=8)
    assert status in (401, 303), head[:300]
    assert not any(upload_dir(node).glob("upload-*/*"))


def test_upload_over_the_size_limit_is_refused(node: WebNode) -> None:
    limit = node.node.settings.web.max_upload_mb * 2**20
    before = len(events(node, "UPLOAD_REJECTED"))
    # declared too large: refused at once, after authentication
    status, _ = exchange(node.node.web.port, post_head("/api/upload", limit + 1, BEARER), (), timeout=8)
    assert status == 413
    # no Content-Length (chunked), streaming past the limit: stopped while it streams
    part = (b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="big.dcm"\r\n\r\n')
    pieces = chunked([part, *(b"\0" * 65536 for _ in range(limit // 65536 + 32))])
    status, _ = exchange(node.node.web.port, post_head("/api/upload", None, BEARER), pieces, timeout=15)
    assert status == 413
    assert len(events(node, "UPLOAD_REJECTED")) == before + 2
    assert not any(upload_dir(node).glob("upload-*"))


def test_small_routes_have_a_small_body_limit(node: WebNode) -> None:
    big = b"username=" + b"a" * (node.node.settings.web.max_request_kb * 1024 + 10)
    status, _ = exchange(node.node.web.port, post_head("/login", len(big), content_type="application/x-www-form-urlencoded"),
                         [big], timeout=8)
    assert status == 413
    status, _ = exchange(node.node.web.port, post_head("/login", None, content_type="application/x-www-form-urlencoded"),
                         list(chunked([big])) + [b"0\r\n\r\n"], timeout=8)
    assert status == 413
    assert events(node, "WEB_REQUEST_REFUSED")


def _zip(members: list[tuple[str, bytes]] | None = None, zero_member_mb: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members or []:
            archive.writestr(name, data)
        if zero_member_mb:
            with archive.open("bomb.dcm", "w", force_zip64=True) as member:
                for _ in range(zero_member_mb):
                    member.write(b"\0" * 2**20)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["ratio", "members", "total"])
def test_zip_limits(node: WebNode, kind: str) -> None:
    data = {"ratio": lambda: _zip(zero_member_mb=64),
            "members": lambda: _zip([(f"empty-{i}.dcm", b"") for i in range(51)]),
            "total": lambda: _zip([(f"noise-{i}.dcm", os.urandom(300 * 1024)) for i in range(4)])}[kind]()
    stored = instance_count(node)
    with node.client(headers=BEARER) as c:
        response = c.post("/api/upload", files=[("files", ("study.zip", data, "application/zip"))])
    assert response.status_code == 413, response.text
    assert {"ratio": "expands", "members": "zip members", "total": "uncompressed"}[kind] in response.json()["detail"]
    assert instance_count(node) == stored
    assert any("study.zip" in e.message for e in events(node, "UPLOAD_REJECTED"))
    assert not any(upload_dir(node).glob("upload-*"))


def test_upload_spools_under_the_data_dir_and_cleans_up(node: WebNode, phantom_files: list[Path]) -> None:
    from tests.web.conftest import wait_for

    body = multipart([(phantom_files[0].name, phantom_files[0].read_bytes())])
    first, rest = body[:2000], body[2000:]
    gate = __import__("threading").Event()

    def pieces() -> Iterator[bytes]:
        yield first
        gate.wait(20)  # the part is half sent: its temporary file must exist by now, in our folder
        yield rest

    import threading

    result: dict[str, tuple[int, bytes]] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", exchange(
        node.node.web.port, post_head("/api/upload", len(body), BEARER), pieces(), timeout=30)))
    thread.start()
    try:
        spooled = wait_for(lambda: list(upload_dir(node).glob("upload-*/part-000001")), 10,
                           "the upload's first part to be spooled under <data_dir>/web-upload")
        assert spooled[0].resolve().is_relative_to(Path(node.node.settings.node.data_dir).resolve())
    finally:
        gate.set()
        thread.join(30)
    assert result["r"][0] == 200, result["r"][1][:300]
    assert not any(upload_dir(node).glob("upload-*"))


def test_forged_session_upload_is_refused_before_any_file_is_written(node: WebNode, phantom_files: list[Path]) -> None:
    with client_from(node, "127.0.0.22", headers=HTML) as c:
        assert log_in(c).status_code == 303
        stored = instance_count(node)
        response = c.post("/api/upload", files=[("files", (p.name, p.read_bytes(), "application/dicom"))
                                                for p in phantom_files[:2]])
        assert response.status_code == 403
        assert instance_count(node) == stored


# -- risks: Host header, headers, cookies, /docs, redirects ------------------------------------
def test_foreign_host_header_is_refused_on_the_open_console(open_node: WebNode) -> None:
    with open_node.client() as c:
        for _ in range(20):
            response = c.get("/api/series", headers={"Host": "rebind.attacker.example"})
            assert response.status_code == 421 and "series_instance_uid" not in response.text
        port = open_node.node.web.port
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert c.get("/api/series", headers={"Host": host}).status_code == 200
    refused = [e for e in events(open_node, "WEB_REQUEST_REFUSED") if e.details.get("reason") == "host"]
    assert 1 <= len(refused) <= 2, "refusals are audited, rate-limited"
    assert "rebind.attacker.example" in refused[0].message


def test_security_headers_on_every_response(open_node: WebNode) -> None:
    with open_node.client(headers=HTML) as c:
        for path in ("/", "/series", "/api/series", "/login", "/no-such-page", "/static/style.css", "/health"):
            response = c.get(path)
            h = response.headers
            csp = h["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
            assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff", path
            assert h["referrer-policy"] in ("no-referrer", "same-origin"), path
            if not path.startswith("/static/"):
                assert h["cache-control"] == "no-store", path


def test_templates_have_no_inline_script() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"inline <script> in {template.name}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"inline event handler in {template.name}"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "web.crt", folder / "web.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_console_sets_secure_cookies(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    web = start_node(tmp_path / "tls", require_login=True, web_extra=f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"')
    try:
        base = web.base.replace("http://", "https://")
        with httpx.Client(base_url=base, verify=False, timeout=30, headers=HTML) as c:
            page = c.get("/login")
            assert page.status_code == 200
            assert "secure" in page.headers["set-cookie"].lower()
            assert "strict-transport-security" in page.headers
            assert log_in(c).status_code == 303
    finally:
        web.node.stop()


def test_secure_cookies_behind_a_tls_proxy(tmp_path: Path) -> None:
    web = start_node(tmp_path / "proxy", require_login=True, web_extra="secure_cookies = true")
    try:
        with web.client(headers=HTML) as c:
            assert "secure" in c.get("/login").headers["set-cookie"].lower()
    finally:
        web.node.stop()


def test_docs_load_their_assets_from_the_node(open_node: WebNode) -> None:
    with open_node.client(headers=HTML) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
        for asset in assets:
            assert asset.startswith("/") and not asset.startswith("//"), f"{asset} is not served by the node"
            response = c.get(asset)
            assert response.status_code == 200 and len(response.content) > 100, asset
        assert c.get("/openapi.json").status_code == 200


def test_login_never_redirects_off_site_with_backslashes(node: WebNode) -> None:
    with client_from(node, "127.0.0.23", headers=HTML) as c:
        response = log_in(c, next_url="/\\evil.example/steal")
        assert response.status_code == 303 and response.headers["location"] == "/"


def test_error_pages_do_not_echo_long_input(open_node: WebNode) -> None:
    with open_node.client() as c:
        response = c.get("/api/series/" + "9" * 5000)
        assert response.status_code == 404 and len(response.text) < 600


def test_migration_0002_adds_and_drops_web_sessions(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from storage.db import Database, alembic_config, sqlite_url

    db = Database(sqlite_url(tmp_path / "audit.sqlite"))
    db.migrate()
    assert "web_sessions" in inspect(db.engine).get_table_names()
    command.downgrade(alembic_config(db.engine), "0001")
    assert "web_sessions" not in inspect(db.engine).get_table_names()
    db.close()


def test_correct_login_still_works(node: WebNode) -> None:
    with client_from(node, "127.0.0.24", headers=HTML) as c:
        assert log_in(c, password=PASSWORD).status_code == 303
        assert c.get("/api/session").json()["user"] == USER


def test_docs_and_report_work_under_the_csp_in_a_browser(page: Any, open_node: WebNode,  # noqa: F811
                                                         open_series: dict) -> None:
    """The CSP forbids inline script: Swagger UI and the report's Print button must still work."""
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(20_000)
    page.goto(open_node.base + "/docs")
    page.wait_for_selector(".opblock-summary")  # the operations list: the bundle ran and read /openapi.json
    assert page.locator(".opblock-summary").count() > 5
    page.goto(f"{open_node.base}/series/{open_series['uid']}/report")
    page.evaluate("() => { window.printed = 0; window.print = () => { window.printed += 1; }; }")
    page.locator("button[data-print]").dispatch_event("click")
    assert page.evaluate("window.printed") == 1  # the handler from /static/print.js ran
    assert not violations, violations
