"""STOW-RS into the node (dicomnode.web.stow): httpx against the real running server, multipart bodies
built here by hand, the database and the spool read back. One node for the module (login required)."""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.models import Event, Instance
from tests.web.conftest import TOKEN, WebNode, start_node, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NATIVE = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
STORED_SEQ, FAILED_SEQ, SOP_UID, REASON = "00081199", "00081198", "00081155", "00081197"
# [node] max_instance_mb = 1 and [web] max_upload_mb = 2: a 1.5 MB part is refused alone, a 3 MB body whole
LIMITS = "max_upload_mb = 2\n[node]\nmax_instance_mb = 1"


@pytest.fixture(scope="module")
def stow_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    web = start_node(tmp_path_factory.mktemp("stow-node"), require_login=True, web_extra=LIMITS)
    yield web
    web.node.stop()


@pytest.fixture(scope="module")
def client(stow_node: WebNode) -> Iterator[httpx.Client]:
    with stow_node.client(headers=AUTH) as c:
        yield c


def variant(path: Path, series: str, study: str | None = None, pad: int = 0) -> tuple[str, bytes]:
    """(SOP Instance UID, Part 10 bytes) of a phantom slice under new UIDs (and `pad` bytes of a private tag)."""
    ds = dcmread(path)
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if study is not None:
        ds.StudyInstanceUID = study
    if pad:
        ds.add_new(0x00091010, "OB", b"\0" * pad)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.SOPInstanceUID), out.getvalue()


def multipart(parts: list[bytes], part_type: str = "application/dicom", close: bool = True) -> tuple[bytes, str]:
    """A multipart/related body and its Content-Type header."""
    boundary = uuid.uuid4().hex
    body = b"".join(b"--%s\r\nContent-Type: %s\r\n\r\n%s\r\n" % (boundary.encode(), part_type.encode(), p) for p in parts)
    if close:
        body += b"--%s--\r\n" % boundary.encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: httpx.Client, parts: list[bytes], path: str = "/dicom-web/studies", **headers: str) -> httpx.Response:
    body, content_type = multipart(parts)
    return client.post(path, content=body, headers={"Content-Type": content_type, **headers})


def stored_uids(node: WebNode, uids: list[str]) -> set[str]:
    with node.node.db.session() as s:
        return set(s.execute(select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(uids))).scalars())


def events(node: WebNode, name: str) -> list[Event]:
    with node.node.db.session() as s:
        rows = s.execute(select(Event).where(Event.name == name).order_by(Event.id)).scalars().all()
        s.expunge_all()
        return list(rows)


def sop_uids(answer: dict[str, Any], tag: str) -> list[str]:
    return [item[SOP_UID]["Value"][0] for item in answer.get(tag, {}).get("Value", []) if "Value" in item.get(SOP_UID, {})]


def test_stow_stores_a_series_which_completes_is_analysed_and_audited(stow_node: WebNode, client: httpx.Client,
                                                                    phantom_files: list[Path]) -> None:
    series = generate_uid()
    sent = [variant(p, series) for p in phantom_files]
    response = stow(client, [data for _, data in sent])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert sorted(sop_uids(answer, STORED_SEQ)) == sorted(uid for uid, _ in sent)
    assert FAILED_SEQ not in answer
    assert answer["00081199"]["Value"][0]["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]  # CT Image Storage
    # durable before the answer: every instance has its row and its file in the spool
    with stow_node.node.db.session() as s:
        paths = s.execute(select(Instance.path).where(Instance.sop_instance_uid.in_([u for u, _ in sent]))).scalars().all()
    assert len(paths) == len(sent)
    spool = Path(stow_node.node.settings.spool_dir)
    assert all((spool / p).is_file() for p in paths)
    received = events(stow_node, "STOW_RECEIVED")[-1]
    assert received.series_instance_uid == series and received.details["stored"] == len(sent)
    # the session's end started the completion clock: the series completes, is routed and analysed
    def analysed() -> dict[str, Any] | None:
        jobs = client.get(f"/api/series/{series}").json()["jobs"]
        return jobs[0] if jobs and jobs[0]["state"] == "done" else None
    wait_for(analysed, 90, f"series {series} sent by STOW-RS to be analysed")
    # the same instances again: de-duplicated, still a success for the client
    again = stow(client, [data for _, data in sent[:3]])
    assert again.status_code == 200 and len(sop_uids(again.json(), STORED_SEQ)) == 3
    assert events(stow_node, "STOW_RECEIVED")[-1].details["duplicates"] == 3


def test_broken_and_foreign_parts_fail_alone_and_xml_answer(stow_node: WebNode, client: httpx.Client,
                                                            phantom_files: list[Path]) -> None:
    study = str(dcmread(phantom_files[0], stop_before_pixels=True).StudyInstanceUID)
    good_uid, good = variant(phantom_files[0], generate_uid())
    foreign_uid, foreign = variant(phantom_files[1], generate_uid(), study=generate_uid())
    big_uid, big = variant(phantom_files[2], generate_uid(), pad=3 * 2**19)  # 1.5 MB: over max_instance_mb
    broken_uid, broken = variant(phantom_files[3], generate_uid())
    broken = broken[:400]  # cut inside the header
    response = stow(client, [good, foreign, broken, big], f"/dicom-web/studies/{study}",
                    Accept="application/dicom+xml")
    assert response.status_code == 202, response.text  # some stored, some not
    assert response.headers["content-type"].startswith("application/dicom+xml")
    root = ET.fromstring(response.content)
    def attribute(parent: ET.Element, tag: str) -> ET.Element | None:
        return parent.find(f"{NATIVE}DicomAttribute[@tag='{tag}']")
    stored = attribute(root, STORED_SEQ)
    failed = attribute(root, FAILED_SEQ)
    assert stored is not None and failed is not None
    stored_items = stored.findall(f"{NATIVE}Item")
    assert [attribute(i, SOP_UID).findtext(f"{NATIVE}Value") for i in stored_items] == [good_uid]  # type: ignore[union-attr]
    reasons = [(attribute(i, SOP_UID).findtext(f"{NATIVE}Value"),  # type: ignore[union-attr]
                int(attribute(i, REASON).findtext(f"{NATIVE}Value")))  # type: ignore[union-attr, arg-type]
               for i in failed.findall(f"{NATIVE}Item")]
    # not of the study in the URL; unparseable (no UID to name); over node.max_instance_mb (not kept)
    assert sorted(reasons, key=str) == sorted([(foreign_uid, 0xC000), (None, 0xC000), (None, 0xA700)], key=str)
    # the good part stored, nothing of the others
    assert stored_uids(stow_node, [good_uid, foreign_uid, big_uid, broken_uid]) == {good_uid}
    refused = events(stow_node, "STOW_INSTANCE_REFUSED")
    assert any(foreign_uid in e.message or e.details.get("sop_instance_uid") == foreign_uid for e in refused)
    assert events(stow_node, "INSTANCE_REJECTED_TOO_LARGE")


def test_all_failed_is_409(stow_node: WebNode, client: httpx.Client) -> None:
    response = stow(client, [b"not DICOM at all" * 10, b"\0" * 200])
    assert response.status_code == 409, response.text
    answer = response.json()
    assert STORED_SEQ not in answer
    assert [item[REASON]["Value"] for item in answer[FAILED_SEQ]["Value"]] == [[0xC000], [0xC000]]


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    "multipart/form-data; boundary=xyz",
    'multipart/related; type="application/dicom+json"; boundary=xyz',
])
def test_wrong_content_type_is_415_and_stores_nothing(stow_node: WebNode, client: httpx.Client,
                                                      phantom_files: list[Path], content_type: str) -> None:
    uid, data = variant(phantom_files[0], generate_uid())
    body = multipart([data])[0] if content_type.startswith("multipart") else data
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    assert not stored_uids(stow_node, [uid])
    assert events(stow_node, "STOW_REJECTED")[-1].details["status"] == 415


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789abcdefghijkl"}])
def test_unauthenticated_is_401_and_stores_nothing(stow_node: WebNode, phantom_files: list[Path],
                                                  headers: dict[str, str]) -> None:
    uid, data = variant(phantom_files[0], generate_uid())
    with stow_node.client(headers=headers) as anonymous:
        response = stow(anonymous, [data])
    assert response.status_code == 401, response.text
    assert not stored_uids(stow_node, [uid])


def test_over_the_body_limit_is_413_and_stores_nothing(stow_node: WebNode, client: httpx.Client,
                                                       phantom_files: list[Path]) -> None:
    series = generate_uid()
    sent = [variant(p, series, pad=2**19) for p in phantom_files[:6]]  # 6 x 0.5 MB: over max_upload_mb = 2
    body, content_type = multipart([data for _, data in sent])
    declared = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert declared.status_code == 413, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams
        for i in range(0, len(body), 2**16):
            yield body[i:i + 2**16]
    streamed = client.post("/dicom-web/studies", content=chunks(), headers={"Content-Type": content_type})
    assert streamed.status_code == 413, streamed.text
    assert not stored_uids(stow_node, [uid for uid, _ in sent])  # the first parts (under the limit) neither
    assert [e.details["status"] for e in events(stow_node, "STOW_REJECTED")[-2:]] == [413, 413]


def test_truncated_body_is_400_and_stores_nothing(stow_node: WebNode, client: httpx.Client,
                                                  phantom_files: list[Path]) -> None:
    uid, data = variant(phantom_files[0], generate_uid())
    body, content_type = multipart([data], close=False)  # a whole first part, then the body stops
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert "closing boundary" in response.json()["detail"]
    assert not stored_uids(stow_node, [uid])


def test_dicomweb_sender_sends_the_auth_header_and_reads_each_outcome(stow_node: WebNode, phantom_files: list[Path],
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dicomnode.deliver.dicomweb against this node's STOW-RS, which requires the token: with the
    Authorization value from a file each instance's outcome comes from the answer; without it, 401."""
    from dicomnode.config import Destination
    from dicomnode.deliver.dicomweb import Item, send

    good_uid, good = variant(phantom_files[0], generate_uid())
    (tmp_path / "good.dcm").write_bytes(good)
    (tmp_path / "bad.dcm").write_bytes(b"not DICOM" * 50)
    (tmp_path / "auth").write_text(f"Bearer {TOKEN}\n")
    items = [Item(1, good_uid, tmp_path / "good.dcm"), Item(2, "1.2.3.4", tmp_path / "bad.dcm")]
    url = f"{stow_node.base}/dicom-web"
    outcome = send(Destination(type="dicomweb", url=url, auth_header_file=tmp_path / "auth"), items, 5)
    assert outcome[1] is None  # stored: named in the Referenced SOP Sequence
    assert outcome[2] is not None and "HTTP 202" in outcome[2]  # not named as stored: failed, retried
    assert stored_uids(stow_node, [good_uid]) == {good_uid}
    unauthenticated = send(Destination(type="dicomweb", url=url), items[:1], 5)
    assert "HTTP 401" in (unauthenticated[1] or "")
    monkeypatch.delenv("DICOMNODE_TEST_UNSET_AUTH", raising=False)
    unset = send(Destination(type="dicomweb", url=url, auth_header_env="DICOMNODE_TEST_UNSET_AUTH"), items[:1], 5)
    assert "DICOMNODE_TEST_UNSET_AUTH" in (unset[1] or "") and TOKEN not in (unset[1] or "")


@pytest.mark.parametrize(("lines", "message"), [
    ('type = "dicomweb"\nurl = "ftp://pacs.example.org/dicom-web"', "must start with http:// or https://"),
    ('type = "dicomweb"\nurl = "https://node:s3cret-pw@pacs.example.org/dicom-web"', "must not carry credentials"),
    ('type = "dicomweb"', "needs url"),
    ('ae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\nurl = "http://127.0.0.1/dicom-web"', 'only for a destination with type = "dicomweb"'),
    ('type = "dicomweb"\nurl = "http://127.0.0.1/dicom-web"\nauth_header_env = "A"\nauth_header_file = "/x"', "not both"),
    ('type = "dicomweb"\nurl = "http://127.0.0.1/dicom-web"\nstorage_commitment = true', "only for a DIMSE destination"),
])
def test_a_dicomweb_destination_is_validated(tmp_path: Path, lines: str, message: str) -> None:
    from dicomnode.config import ConfigError, load_settings

    config = tmp_path / "node.toml"
    config.write_text(f"[destinations.WEB]\n{lines}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert message in str(refused.value) and "destinations.WEB" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)  # a password in a refused URL is not echoed


def test_a_console_session_may_stow(stow_node: WebNode, phantom_files: list[Path]) -> None:
    """The same authentication as the API: a logged-in session works too (multipart/related cannot be sent
    cross-site without a CORS preflight, so no CSRF token is asked for)."""
    from tests.web.test_auth import log_in

    uid, data = variant(phantom_files[0], generate_uid())
    with stow_node.client() as browser:
        assert log_in(browser).status_code == 303
        response = stow(browser, [data])
    assert response.status_code == 200, response.text
    assert stored_uids(stow_node, [uid]) == {uid}
    assert events(stow_node, "STOW_RECEIVED")[-1].details["user"] == "admin"
