"""Issue 9: a bounded, seeded fuzz of the console's HTTP API with hostile bodies, headers and paths.

After each batch: /health answers, nothing the fuzz named was written outside the data directory,
every instance the API said it stored is in the audit DB, and no request got a 5xx.
"""
from __future__ import annotations

import io
import random
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from storage.models import Instance
from tests.web.conftest import TOKEN, WebNode, start_node
from tests.web.http_raw import exchange, post_head

SEED = 20261130
BATCHES = 8
PER_BATCH = 30  # 240 hostile requests in all, about 20 s here
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CANARY = "fuzz-canary-escaped"  # the file name `../` members try to write outside the data dir
LIMITS = "max_upload_mb = 8\nmax_zip_members = 300\nmax_zip_uncompressed_mb = 64\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    web = start_node(tmp_path_factory.mktemp("fuzz-node"), require_login=True, web_extra=LIMITS)
    yield web
    web.node.stop()


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    from inference.phantom import write_phantom_series

    case = write_phantom_series(tmp_path_factory.mktemp("fuzz-phantom"), 7, matrix=64, n_slices=8, n_nodules=0)
    return [p.read_bytes() for p in case.files]


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


class Fuzzer:
    def __init__(self, node: WebNode, dicom: list[bytes], rng: random.Random) -> None:
        self.node, self.dicom, self.rng = node, dicom, rng
        self.port = node.node.web.port
        self.reported_stored = 0
        self.statuses: list[tuple[str, int]] = []

    def client(self, **kwargs: object) -> httpx.Client:
        return self.node.client(**kwargs)  # type: ignore[arg-type]

    def note(self, what: str, status: int) -> None:
        self.statuses.append((what, status))

    def upload(self, what: str, files: list[tuple[str, bytes]]) -> None:
        with self.client(headers=BEARER) as c:
            r = c.post("/api/upload", files=[("files", (n, d, "application/octet-stream")) for n, d in files])
        if r.status_code == 200:
            self.reported_stored += r.json()["stored"]
        self.note(what, r.status_code)

    # -- hostile multipart bodies --------------------------------------------------------
    def traversal_zip(self) -> None:
        picks = self.rng.sample(self.dicom, 3)
        names = [f"../../{CANARY}.dcm", f"/tmp/{CANARY}-abs.dcm", f"..\\..\\{CANARY}-win.dcm"]
        self.upload("zip with ../ names", [("evil.zip", _zip(list(zip(names, picks))))])

    def zip_bomb(self) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("bomb.dcm", "w") as m:
            for _ in range(self.rng.randint(8, 32)):
                m.write(b"\0" * 2**20)
        self.upload("zip bomb", [("bomb.zip", buffer.getvalue())])

    def many_members(self) -> None:
        self.upload("many empty members", [("many.zip", _zip([(f"e{i}", b"") for i in range(self.rng.randint(250, 400))]))])

    def many_parts(self) -> None:
        n = self.rng.randint(50, 400)
        self.upload("many parts", [(f"p{i}.dcm", self.rng.randbytes(self.rng.randint(0, 64))) for i in range(n)])

    def garbage_files(self) -> None:
        self.upload("garbage and real", [("junk.dcm", self.rng.randbytes(self.rng.randint(1, 4096))),
                                         ("real.dcm", self.rng.choice(self.dicom)),
                                         ("trunc.dcm", self.rng.choice(self.dicom)[: self.rng.randint(1, 400)])])

    def bad_boundary(self) -> None:
        body = b"--other\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\n\r\nxx\r\n--other--\r\n"
        ctype = self.rng.choice(["multipart/form-data; boundary=XyZ", "multipart/form-data", "multipart/form-data; boundary=",
                                 "multipart/form-data; boundary=" + "B" * 5000, "text/plain"])
        status, _ = exchange(self.port, post_head("/api/upload", len(body), BEARER, content_type=ctype), [body])
        self.note(f"bad boundary {ctype[:40]}", status)

    def huge_part_header(self) -> None:
        value = "x" * self.rng.randint(20_000, 200_000)
        body = (f"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\nX-Pad: {value}\r\n\r\n"
                "data\r\n--XyZ--\r\n").encode()
        status, _ = exchange(self.port, post_head("/api/upload", len(body), BEARER), [body])
        self.note("huge part header", status)

    # -- hostile headers -------------------------------------------------------------------
    def content_length_lie(self) -> None:
        body = self.rng.randbytes(self.rng.randint(100, 5000))
        declared = self.rng.choice([0, 1, len(body) // 2, len(body) * 50, 2**62])
        status, _ = exchange(self.port, post_head("/api/upload", declared, BEARER), [body], timeout=5)
        self.note(f"content-length lie {declared}", status)

    def hostile_host(self) -> None:
        host = self.rng.choice(["evil.example", "127.0.0.1.evil.example", "", "localhost@evil", "[::1", "a" * 3000])
        with self.client() as c:
            r = c.get("/api/series", headers={**BEARER, "Host": host})
        self.note(f"host {host[:30]}", r.status_code)

    def huge_cookie(self) -> None:
        cookie = "dicomnode_session=" + "".join(self.rng.choice("abcdef.=-_") for _ in range(self.rng.randint(4000, 60000)))
        with self.client() as c:
            try:
                r = c.get("/api/series", headers={"Cookie": cookie})
                self.note("huge cookie", r.status_code)
            except httpx.HTTPError:  # the server may drop an over-long header block
                self.note("huge cookie (dropped)", 400)

    # -- hostile paths ---------------------------------------------------------------------
    def hostile_path(self) -> None:
        path = self.rng.choice([
            "/api/series/..%2f..%2f..%2fetc%2fpasswd", "/api/series/%00", "/api/series/1.2%00.3",
            "/static/..%2f..%2fnode.example.toml", "/static/../../node.example.toml", "/docs/assets/..%2f..%2f__init__.py",
            "/series/1.2.3/overlay/..%2f..%2f..%2fnode.toml.png", "/series/..%2f..%2f/report.pdf",
            "/api/series/" + "9" * self.rng.randint(1000, 20000), "/api/events?limit=1000000000",
            "/api/events?since=99999999999999d", "/api/events?limit=-1", "/audit?limit=99999999999999999999",
            "/login?next=//evil.example", "/api/series?series=" + "%" * 200,
        ])
        with self.client(headers=BEARER) as c:
            try:
                r = c.get(path)
            except httpx.HTTPError:
                self.note(f"path {path[:40]} (dropped)", 400)
                return
        assert "import " not in r.text and "[web]" not in r.text, f"{path} served a file it must not"
        self.note(f"path {path[:40]}", r.status_code)

    def actions(self) -> list[Callable[[], None]]:
        return [self.traversal_zip, self.zip_bomb, self.many_members, self.many_parts, self.garbage_files,
                self.bad_boundary, self.huge_part_header, self.content_length_lie, self.hostile_host,
                self.huge_cookie, self.hostile_path]


def outside_canaries(roots: list[Path]) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        found += [p for p in root.rglob(f"*{CANARY}*") if p.is_file()]
    return found


def test_fuzz_http_api(node: WebNode, dicom_files: list[bytes]) -> None:
    fuzz = Fuzzer(node, dicom_files, random.Random(SEED))
    data_dir = Path(node.node.settings.node.data_dir).resolve()
    # where a ../ name would land: next to the data dir, its parents' folders, the system temp dir
    roots = [data_dir.parent, Path(tempfile.gettempdir()) / CANARY, Path.cwd() / CANARY]
    for batch in range(BATCHES):
        for action in fuzz.rng.choices(fuzz.actions(), k=PER_BATCH):
            action()
        with node.client() as c:
            assert c.get("/health").status_code in (200, 503), f"batch {batch}: /health does not answer"
            assert c.get("/health/live").status_code == 200
        errors = [(what, status) for what, status in fuzz.statuses if status >= 500 or status == 0]
        assert not errors, f"batch {batch}: server errors or no answer: {errors}"
        escaped = [p for p in outside_canaries(roots) if not p.resolve().is_relative_to(data_dir)]
        assert not escaped and not list(Path("/tmp").glob(f"{CANARY}*")), f"files outside the data dir: {escaped}"
        with node.node.db.session() as s:
            in_db = s.execute(select(func.count(Instance.id))).scalar_one()
        assert in_db >= fuzz.reported_stored, f"API reported {fuzz.reported_stored} stored, audit DB has {in_db}"
        assert not list((data_dir / "web-upload").glob("upload-*")), "upload temporaries left behind"
    assert fuzz.reported_stored > 0, "the fuzz never got a real instance through: it tested nothing"
