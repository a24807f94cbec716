"""DICOM audit messages (dicomnode.atna.messages) checked element by element against the DICOM audit
message schema (PS3.15 A.5.1: element order, cardinalities, required attributes, enumerated values),
and the RFC 5424 frame around them. tests/e2e/test_atna.py checks what rsyslog receives with the
same validator."""
from __future__ import annotations

import base64
import re
import select
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import pytest

from dicomnode.atna import messages as m
from dicomnode.atna.syslog import SyslogError, SyslogSender, frame
from dicomnode.config import ConfigError, load_settings

WHEN = datetime(2026, 11, 30, 15, 4, 5, 123456, tzinfo=timezone.utc)
SRC = m.Source("NODE-SRC", "DICOMNODE", "node.example", 4242, "HOSPITAL")
CT = "1.2.840.10008.5.1.4.1.1.2"

CODED = {"csd-code", "codeSystemName", "originalText", "displayName"}
DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# (tag, min, max) in schema order; max None = unbounded
ORDER = {
    "AuditMessage": [("EventIdentification", 1, 1), ("ActiveParticipant", 1, None),
                     ("AuditSourceIdentification", 1, 1), ("ParticipantObjectIdentification", 0, None)],
    "EventIdentification": [("EventID", 1, 1), ("EventTypeCode", 0, None), ("EventOutcomeDescription", 0, 1),
                            ("PurposeOfUse", 0, None)],
    "ActiveParticipant": [("RoleIDCode", 0, None), ("MediaIdentifier", 0, 1)],
    "AuditSourceIdentification": [("AuditSourceTypeCode", 0, None)],
    "ParticipantObjectIdentification": [
        ("ParticipantObjectIDTypeCode", 1, 1), ("ParticipantObjectName|ParticipantObjectQuery", 0, 1),
        ("ParticipantObjectDetail", 0, None), ("ParticipantObjectDescription", 0, 1), ("MPPS", 0, None),
        ("Accession", 0, None), ("SOPClass", 0, None), ("ParticipantObjectContainsStudy", 0, 1),
        ("Encrypted", 0, 1), ("Anonymized", 0, 1)],
}
CODED_ELEMENTS = {"EventID", "EventTypeCode", "RoleIDCode", "AuditSourceTypeCode", "ParticipantObjectIDTypeCode",
                  "PurposeOfUse"}


def _check_order(el: ET.Element) -> None:
    slots, i, counts = ORDER[el.tag], 0, 0
    for child in el:
        while i < len(slots) and child.tag not in slots[i][0].split("|"):
            assert counts >= slots[i][1], f"{el.tag}: {slots[i][0]} missing before {child.tag}"
            i, counts = i + 1, 0
        assert i < len(slots), f"{el.tag}: {child.tag} is not allowed here (or out of order)"
        counts += 1
        assert slots[i][2] is None or counts <= slots[i][2], f"{el.tag}: too many {child.tag}"
    for tag, low, _ in slots[i + (1 if counts else 0) if i < len(slots) else i:]:
        assert low == 0, f"{el.tag}: required {tag} missing"
    if not list(el):
        assert all(low == 0 for _, low, _ in slots), f"{el.tag}: empty"


def _check_coded(el: ET.Element) -> None:
    assert set(el.attrib) <= CODED, f"{el.tag}: unexpected attributes {set(el.attrib) - CODED}"
    for required in ("csd-code", "codeSystemName", "originalText"):
        assert el.get(required), f"{el.tag}: {required} missing"


def assert_audit_message(xml: bytes) -> ET.Element:
    """The PS3.15 A.5.1 structure of one audit message; returns the parsed root."""
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'), xml[:60]
    assert b"\n" not in xml, "one line: a repository that splits at line ends must get it whole"
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    for el in root.iter():
        if el.tag in ORDER:
            _check_order(el)
        if el.tag in CODED_ELEMENTS:
            _check_coded(el)
    ident = root.find("EventIdentification")
    assert ident is not None
    assert ident.get("EventActionCode") in (None, "C", "R", "U", "D", "E")
    assert DATETIME_RE.match(ident.get("EventDateTime", "")), ident.get("EventDateTime")
    assert ident.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    for p in root.findall("ActiveParticipant"):
        assert p.get("UserID"), "ActiveParticipant without UserID"
        assert p.get("UserIsRequestor") in ("true", "false")
        if p.get("NetworkAccessPointTypeCode") is not None:
            assert p.get("NetworkAccessPointTypeCode") in ("1", "2", "3", "4", "5") and p.get("NetworkAccessPointID")
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID")
    for o in root.findall("ParticipantObjectIdentification"):
        assert o.get("ParticipantObjectID")
        assert o.get("ParticipantObjectTypeCode", "1") in ("1", "2", "3", "4")
        assert 1 <= int(o.get("ParticipantObjectTypeCodeRole", "1")) <= 24
        for sop in o.findall("SOPClass"):
            assert sop.get("UID") and int(sop.get("NumberOfInstances", "x")) >= 0
    return root


def code_of(el: ET.Element | None) -> tuple[str | None, str | None]:
    assert el is not None
    return el.get("csd-code"), el.get("codeSystemName")


def test_application_start_names_the_node_and_the_audit_source() -> None:
    root = assert_audit_message(m.application_activity(SRC, WHEN, True, "AE DICOMNODE listening on 0.0.0.0:11112"))
    ident = root.find("EventIdentification")
    assert code_of(ident.find("EventID")) == ("110100", "DCM")
    assert code_of(ident.find("EventTypeCode")) == ("110120", "DCM")
    assert ident.get("EventDateTime") == "2026-11-30T15:04:05.123456Z"
    app = root.find("ActiveParticipant")
    assert app.get("AlternativeUserID") == "AETITLES=DICOMNODE" and app.get("UserIsRequestor") == "false"
    assert code_of(app.find("RoleIDCode")) == ("110150", "DCM")
    assert root.find("AuditSourceIdentification").attrib == {"AuditSourceID": "NODE-SRC",
                                                             "AuditEnterpriseSiteID": "HOSPITAL"}
    stop = assert_audit_message(m.application_activity(SRC, WHEN, False))
    assert code_of(stop.find("EventIdentification/EventTypeCode")) == ("110121", "DCM")


def test_instances_received_lists_the_study_patient_and_sop_class_counts() -> None:
    study = m.Study("1.2.3.4", "LIDC-0002", "Doe^Jane", "ACC1", {CT: 3})
    sender = m.Participant("SCANNER", m.ROLE_SOURCE, True, "10.1.2.3", "AETITLES=SCANNER")
    root = assert_audit_message(m.instances_transferred(SRC, WHEN, sender, SRC.participant(m.ROLE_DESTINATION),
                                                        [study], created=True))
    ident = root.find("EventIdentification")
    assert code_of(ident.find("EventID")) == ("110104", "DCM") and ident.get("EventActionCode") == "C"
    scanner, node = root.findall("ActiveParticipant")
    assert (scanner.get("UserID"), scanner.get("NetworkAccessPointTypeCode")) == ("SCANNER", "2")
    assert code_of(scanner.find("RoleIDCode")) == ("110153", "DCM")
    assert code_of(node.find("RoleIDCode")) == ("110152", "DCM")
    st, patient = root.findall("ParticipantObjectIdentification")
    assert st.get("ParticipantObjectID") == "1.2.3.4" and code_of(st.find("ParticipantObjectIDTypeCode")) == ("110180", "DCM")
    assert st.find("Accession").get("Number") == "ACC1"
    assert st.find("SOPClass").attrib == {"UID": CT, "NumberOfInstances": "3"}
    assert patient.get("ParticipantObjectID") == "LIDC-0002"
    assert code_of(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881")
    assert patient.findtext("ParticipantObjectName") == "Doe^Jane"


def test_failures_and_alerts_carry_outcome_and_free_text_on_one_line() -> None:
    user = m.Participant("mallory", None, True, "192.0.2.7")
    root = assert_audit_message(m.user_authentication(SRC, WHEN, user, ok=False,
                                                      description="failed login for 'mallory'\nfrom 192.0.2.7 <&>"))
    ident = root.find("EventIdentification")
    assert code_of(ident.find("EventID")) == ("110114", "DCM") and ident.get("EventOutcomeIndicator") == "4"
    assert ident.findtext("EventOutcomeDescription") == "failed login for 'mallory'\nfrom 192.0.2.7 <&>"
    alert = assert_audit_message(m.security_alert(SRC, WHEN, m.NODE_AUTHENTICATION, user, "EVIL@192.0.2.7",
                                                  m.ID_NODE, ok=False, description="calling AE not allowed"))
    assert code_of(alert.find("EventIdentification/EventID")) == ("110113", "DCM")
    assert code_of(alert.find("EventIdentification/EventTypeCode")) == ("110126", "DCM")
    subject = alert.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectTypeCodeRole") == "13" and subject.get("ParticipantObjectID") == "EVIL@192.0.2.7"


def test_characters_xml_cannot_carry_do_not_break_the_message() -> None:
    """An ISO 2022 patient name carries ESC; XML 1.0 forbids it, and one such name must not make the
    repository refuse the whole message."""
    study = m.Study("1.2.3", "P1", "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B", sop_classes={CT: 1})
    root = assert_audit_message(m.instances_transferred(SRC, WHEN, SRC.participant(m.ROLE_SOURCE, True),
                                                        SRC.participant(m.ROLE_DESTINATION), [study], created=False))
    name = root.findall("ParticipantObjectIdentification")[1].findtext("ParticipantObjectName")
    assert name == "Yamada^Tarou=\ufffd$B;3ED\ufffd(B^\ufffd$BB@O:\ufffd(B"


def test_query_message_is_ready_for_priors() -> None:
    requestor = m.Participant("DICOMNODE", m.ROLE_SOURCE, True, "10.0.0.5")
    pacs = m.Participant("PACS", m.ROLE_DESTINATION, False, "10.0.0.9")
    root = assert_audit_message(m.query(SRC, WHEN, requestor, pacs, "1.2.840.10008.5.1.4.1.2.2.1", b"\x08\x00\x52\x00",
                                        "1.2.840.10008.1.2"))
    obj = root.find("ParticipantObjectIdentification")
    assert code_of(obj.find("ParticipantObjectIDTypeCode")) == ("110181", "DCM")
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")) == b"\x08\x00\x52\x00"


def test_validator_refuses_what_the_schema_refuses() -> None:
    """The checker itself must catch a wrong order, a missing required element or attribute."""
    good = m.application_activity(SRC, WHEN, True)
    swapped = good.replace(b"<ActiveParticipant", b"<X").replace(b"</ActiveParticipant>", b"</X>")
    with pytest.raises(AssertionError):
        assert_audit_message(swapped)
    with pytest.raises(AssertionError):
        assert_audit_message(good.replace(b' originalText="Application Activity"', b""))
    with pytest.raises(AssertionError):
        assert_audit_message(good.replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator="1"'))


def test_rfc5424_frame_has_the_ihe_header() -> None:
    xml = m.application_activity(SRC, WHEN, True)
    framed = frame(xml, WHEN, "node.example", 4242)
    header, _, body = framed.partition(b" - ")
    assert header == b"<85>1 2026-11-30T15:04:05.123456Z node.example dicomnode 4242 IHE+RFC-3881"
    assert body == xml
    assert frame(xml, WHEN, "bad host\x00name", 1, severity=4).startswith(b"<84>1 2026-11-30T15:04:05.123456Z badhostname ")


def test_atna_settings_refuse_an_incomplete_repository(tmp_path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[atna]\nenabled = true\n")
    with pytest.raises(ConfigError, match="atna.host"):
        load_settings(config)
    config.write_text('[atna]\nenabled = true\nhost = "127.0.0.1"\ntransport = "tls"\n')
    with pytest.raises(ConfigError, match="atna.ca_file"):
        load_settings(config)
    config.write_text('[atna]\nenabled = true\nhost = "127.0.0.1"\ntransport = "udp"\nport = 514\n')
    assert load_settings(config).atna.transport == "udp"


def test_conformance_catalogue_names_exactly_the_mapped_events() -> None:
    from dicomnode.atna.exporter import CATALOGUE, Mapper

    catalogued = {int(c) for codes, _, _, _ in CATALOGUE for c in codes}
    assert catalogued == set(Mapper(SRC)._by_code)


def _listener(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(2)
    sock.settimeout(10)
    return sock


def _read_frames(conn: socket.socket, count: int) -> list[bytes]:
    """Octet-counted frames (RFC 6587 3.4.1 / RFC 5425 4.3): 'LENGTH SP MESSAGE'."""
    data, frames = b"", []
    while len(frames) < count:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {len(frames)} of {count} frames"
        data += chunk
        while b" " in data:
            length, _, rest = data.partition(b" ")
            if len(rest) < int(length):
                break
            frames.append(rest[:int(length)])
            data = rest[int(length):]
    return frames


def test_tcp_frames_are_octet_counted_and_a_closed_repository_connection_is_reopened() -> None:
    """A repository that closed the connection (restart, idle timeout) must not swallow the next
    message into a dead socket: the sender sees the close and sends on a new connection."""
    server = _listener(socket.SOCK_STREAM)
    sender = SyslogSender("127.0.0.1", server.getsockname()[1], "tcp", 5)
    first = frame(m.application_activity(SRC, WHEN, True), WHEN, "h", 1)
    try:
        sender.send([first, first + b" second"])
        conn, _ = server.accept()
        assert _read_frames(conn, 2) == [first, first + b" second"]
        conn.close()  # the repository goes away between two messages
        select.select([sender._sock], [], [], 5)  # the FIN has arrived: what the sender must notice
        sender.send([b"after the close"])
        conn2, _ = server.accept()
        assert _read_frames(conn2, 1) == [b"after the close"]
        conn2.close()
    finally:
        sender.close()
        server.close()


def test_udp_sends_one_message_per_datagram_and_a_closed_port_raises() -> None:
    server = _listener(socket.SOCK_DGRAM)
    sender = SyslogSender("127.0.0.1", server.getsockname()[1], "udp", 5)
    message = frame(m.application_activity(SRC, WHEN, True), WHEN, "h", 1)
    try:
        sender.send([message, b"two"])
        assert server.recv(65536) == message and server.recv(65536) == b"two"
    finally:
        sender.close()
        server.close()
    closed = SyslogSender("127.0.0.1", _free_tcp_port(), "tcp", 2)
    with pytest.raises(SyslogError, match="audit repository tcp://127.0.0.1:"):
        closed.send([message])


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings_changes_are_audited_by_key_and_user_never_by_value(tmp_path) -> None:
    from sqlalchemy import select

    from dicomnode.atna.settings_audit import record_settings_changes
    from dicomnode.core.passwords import hash_password
    from storage.db import Database
    from storage.models import Event, SettingsSnapshot

    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    db.migrate()
    first, second = hash_password("first long password", iterations=1000), hash_password("second long pass", iterations=1000)

    def settings(users: dict[str, str], port: int) -> object:
        config = tmp_path / "node.toml"
        entries = ", ".join(f'{name} = "{h}"' for name, h in users.items())
        config.write_text(f"[web]\nport = {port}\nusers = {{ {entries} }}\n")
        return load_settings(config)

    try:
        assert record_settings_changes(db, settings({"admin": first}, 8080)) == []  # first start: the baseline
        assert record_settings_changes(db, settings({"admin": first}, 8080)) == []  # nothing changed, nothing said
        changed = record_settings_changes(db, settings({"admin": second, "alice": first}, 8081))
        assert changed == ["web.port", "web.users.admin", "web.users.alice"]
        with db.session() as s:
            events = {e.name: e for e in s.execute(select(Event)).scalars()}
            snapshot = s.get(SettingsSnapshot, 1).digests
        assert events["USERS_CHANGED"].message == ("console users changed since the last start: added alice; "
                                                   "new password for admin")
        assert events["SETTINGS_CHANGED"].details == {"keys": ["web.port"], "security": False}
        said = repr({k: (v.message, v.details) for k, v in events.items()})
        assert "8081" not in said and first not in said and second not in said
        assert first not in repr(snapshot) and second not in repr(snapshot)  # digests only
    finally:
        db.close()


def test_mapper_reports_per_association_and_study_uploads_deletions_and_alerts(tmp_path) -> None:
    """The exporter's mapping from audit rows, on a real audit database: an association that carried
    two studies gives two messages (not one per instance), an upload one per study, and so on."""
    from dicomnode.atna.exporter import Mapper
    from storage.audit import record_event
    from storage.db import Database
    from storage.events import EventCode
    from storage.models import Association, Instance, Series, Study

    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    db.migrate()
    try:
        with db.session() as s:
            assoc = Association(calling_ae="SCANNER", called_ae="DICOMNODE", peer_host="10.1.2.3", peer_port=4000,
                                state="released")
            s.add(assoc)
            s.flush()
            for n, (study_uid, via) in enumerate([("1.2.1", assoc.id), ("1.2.2", assoc.id), ("1.2.3", None)]):
                study = Study(study_instance_uid=study_uid, patient_id=f"P{n}", patient_name=f"Doe^{n}")
                s.add(study)
                s.flush()
                series = Series(series_instance_uid=study_uid + ".1", study_id=study.id)
                s.add(series)
                s.flush()
                for i in range(n + 2):  # 2, 3 and 4 instances
                    s.add(Instance(sop_instance_uid=f"{study_uid}.1.{i}", sop_class_uid=CT, transfer_syntax_uid="1.2.840.10008.1.2",
                                   series_id=series.id, association_id=via, path=f"x/{study_uid}/{i}", size_bytes=1))
            events = {
                "received": record_event(s, EventCode.ASSOCIATION_RELEASED, "9 instance(s)", association_id=assoc.id),
                "upload": record_event(s, EventCode.UPLOAD_RECEIVED, "admin uploaded 4 instance(s) from 10.9.9.9",
                                       details={"user": "admin", "client": "10.9.9.9", "series": {"1.2.3.1": 4}}),
                "stow": record_event(s, EventCode.STOW_RECEIVED, "STOW-RS by api from 10.9.9.8: 4 instance(s) stored",
                                     details={"user": "api", "client": "10.9.9.8", "series": {"1.2.3.1": 4}}),
                "deleted": record_event(s, EventCode.RETENTION_DELETED, "files removed", series_instance_uid="1.2.2.1",
                                        details={"what": "source"}),
                "results deleted": record_event(s, EventCode.RETENTION_DELETED, "results removed",
                                                series_instance_uid="1.2.2.1", details={"what": "outbox"}),
                "action": record_event(s, EventCode.ADMIN_ACTION, "admin re-queued dead letters from 10.9.9.9",
                                       details={"user": "admin", "client": "10.9.9.9"}),
                "tls": record_event(s, EventCode.TLS_HANDSHAKE_FAILED, "TLS handshake with 192.0.2.5:999 failed",
                                    details={"peer_host": "192.0.2.5", "peer_port": 999}),
                "job": record_event(s, EventCode.JOB_DONE, "1 finding(s)"),
            }
            s.flush()
            mapper = Mapper(SRC)
            out = {label: [assert_audit_message(o.xml) for o in mapper.messages(s, e)] for label, e in events.items()}

        received = out["received"]
        assert [(r.find("ParticipantObjectIdentification").get("ParticipantObjectID"),
                 r.find("ParticipantObjectIdentification/SOPClass").get("NumberOfInstances")) for r in received] \
            == [("1.2.1", "2"), ("1.2.2", "3")]
        assert {r.find("ActiveParticipant").get("UserID") for r in received} == {"SCANNER"}
        (upload,) = out["upload"]
        assert upload.find("ActiveParticipant").attrib["UserID"] == "admin"
        assert upload.find("ActiveParticipant").attrib["NetworkAccessPointID"] == "10.9.9.9"
        assert upload.find("ParticipantObjectIdentification/SOPClass").get("NumberOfInstances") == "4"
        (stow,) = out["stow"]  # what web/stow.py records: stored instances per series, like an upload
        assert stow.find("ActiveParticipant").attrib["NetworkAccessPointID"] == "10.9.9.8"
        assert stow.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "1.2.3"
        assert stow.find("ParticipantObjectIdentification/SOPClass").get("NumberOfInstances") == "4"
        (deleted,) = out["deleted"]
        assert code_of(deleted.find("EventIdentification/EventID")) == ("110105", "DCM")
        assert out["results deleted"] == []  # the node's own objects, not the study
        (action,) = out["action"]
        assert code_of(action.find("EventIdentification/EventTypeCode")) == ("110132", "DCM")
        assert [p.get("UserID") for p in action.findall("ActiveParticipant")][1] == "admin"
        (tls,) = out["tls"]
        assert tls.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "192.0.2.5"
        assert tls.find("EventIdentification").get("EventOutcomeIndicator") == "4"
        assert out["job"] == []  # not security-relevant: not sent
    finally:
        db.close()
