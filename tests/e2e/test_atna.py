"""IHE ATNA end to end: Debian's rsyslog (imtcp over TLS, gtls driver, client certificates required)
is the audit repository. It is down while the node starts, receives a study, sends a result and
refuses a console login, and while the node restarts; once it is up, every audit message arrives,
none twice, each with the RFC 5424 header IHE asks for and XML that holds the PS3.15 A.5 structure."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicomnode.core.passwords import hash_password
from tests.conftest import LIDC_SERIES, require_tool
from tests.node.conftest import node_config
from tests.node.helpers import NodeProcess, StoreSCP, free_port, port_open, storescu, wait_for
from tests.node.test_atna_messages import assert_audit_message

USER, PASSWORD = "admin", "correct horse battery"


def _openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, the repository's server certificate and the node's client certificate, both for 127.0.0.1."""
    d = tmp_path_factory.mktemp("atna-pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ATNA Test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name in ("arr", "node"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-out", str(d / f"{name}.crt"), "-extfile", str(d / f"{name}.ext"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Other CA",
             "-keyout", str(d / "other-ca.key"), "-out", str(d / "other-ca.crt"))
    return d


# every RFC 5424 field rsyslog parsed, as one JSON object per message
TEMPLATE = """template(name="audit_json" type="list") {
  constant(value="{\\"pri\\":\\"") property(name="pri")
  constant(value="\\",\\"version\\":\\"") property(name="protocol-version")
  constant(value="\\",\\"timestamp\\":\\"") property(name="timereported" dateFormat="rfc3339")
  constant(value="\\",\\"hostname\\":\\"") property(name="hostname" format="json")
  constant(value="\\",\\"app\\":\\"") property(name="app-name" format="json")
  constant(value="\\",\\"procid\\":\\"") property(name="procid" format="json")
  constant(value="\\",\\"msgid\\":\\"") property(name="msgid" format="json")
  constant(value="\\",\\"sd\\":\\"") property(name="structured-data" format="json")
  constant(value="\\",\\"msg\\":\\"") property(name="msg" format="json")
  constant(value="\\"}\\n")
}"""


class Rsyslog:
    """rsyslogd -n as an RFC 5425 receiver writing what it parsed to a file."""

    def __init__(self, folder: Path, port: int, pki: Path) -> None:
        self.folder, self.port = folder, port
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "received.jsonl"
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(f"""
global(workDirectory="{folder}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{pki / 'ca.crt'}"
       DefaultNetstreamDriverCertFile="{pki / 'arr.crt'}" DefaultNetstreamDriverKeyFile="{pki / 'arr.key'}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="audit")
{TEMPLATE}
ruleset(name="audit") {{ action(type="omfile" file="{self.out}" template="audit_json" asyncWriting="off") }}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rsyslog":
        # /usr/sbin is not on every user's PATH
        tool = "/usr/sbin/rsyslogd" if os.access("/usr/sbin/rsyslogd", os.X_OK) else require_tool("rsyslogd")
        self.proc = subprocess.Popen([tool, "-n", "-f", str(self.conf), "-i",
                                      str(self.folder / "rsyslogd.pid")],
                                     stdout=subprocess.DEVNULL, stderr=(self.folder / "rsyslogd.log").open("ab"))
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 30, "rsyslogd to listen")
        assert self.proc.poll() is None, (self.folder / "rsyslogd.log").read_text()
        return self

    def received(self) -> list[dict[str, str]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def _config(pacs_port: int, arr_port: int, web_port: int, pki: Path) -> str:
    config = node_config(pacs_port, extra=f"""
[atna]
enabled = true
host = "127.0.0.1"
port = {arr_port}
transport = "tls"
ca_file = "{pki / 'ca.crt'}"
cert_file = "{pki / 'node.crt'}"
key_file = "{pki / 'node.key'}"
audit_source_id = "LUNG-NODE-1"
enterprise_site_id = "TEST-HOSPITAL"
poll_seconds = 0.2
backoff_initial_s = 0.3
backoff_max_s = 1.0
connect_timeout_s = 5
""")
    web = f"""[web]
host = "127.0.0.1"
port = {web_port}
min_free_disk_mb = 1
users = {{ {USER} = "{hash_password(PASSWORD, iterations=1000)}" }}
"""
    return config.replace("[web]\nenabled = false\n", web)


def _events(node: NodeProcess, name: str) -> list[sqlite3.Row]:
    with sqlite3.connect(node.data_dir / "audit.sqlite") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM events WHERE name = ? ORDER BY id", (name,)).fetchall()


def _failed_login(web_port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as c:
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        answer = c.post("/login", data={"username": "mallory", "password": "guess", "csrf_token": token, "next": "/"})
        assert answer.status_code == 401


def _expected_messages(node: NodeProcess) -> int:
    """How many messages the node's audit rows make, counted by the exporter's own mapping in this process."""
    from sqlalchemy import select

    from dicomnode.atna import messages as m
    from dicomnode.atna.exporter import Mapper
    from storage.db import Database
    from storage.models import Event

    db = Database(f"sqlite:///{node.data_dir / 'audit.sqlite'}")
    try:
        with db.session() as s:
            mapper = Mapper(m.Source("x", "x", "x", 1))
            return sum(len(mapper.messages(s, e)) for e in s.execute(select(Event)).scalars())
    finally:
        db.close()


def _parsed(record: dict[str, str]) -> tuple[ET.Element, str]:
    root = assert_audit_message(record["msg"].encode("utf-8"))
    ident = root.find("EventIdentification")
    return root, f'{ident.find("EventID").get("csd-code")}/{ident.get("EventActionCode")}'


@pytest.fixture
def rsyslog(tmp_path: Path, pki: Path) -> Iterator[Rsyslog]:
    receiver = Rsyslog(tmp_path / "arr", free_port(), pki)
    yield receiver
    receiver.stop()


def test_audit_messages_survive_a_down_repository_and_a_restart(tmp_path: Path, pki: Path, rsyslog: Rsyslog) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    web_port = free_port()
    node = NodeProcess(tmp_path / "node", _config(pacs.port, rsyslog.port, web_port, pki),
                       extra_args=["--web-port", str(web_port)])
    try:
        node.start()
        wait_for(lambda: port_open(web_port), 30, "the console")
        storescu(node.port, sorted(LIDC_SERIES.iterdir())[:3])
        _failed_login(web_port)
        wait_for(lambda: _events(node, "DELIVERY_SENT"), 120, "the result to reach the PACS")
        wait_for(lambda: _events(node, "ATNA_REPOSITORY_UNREACHABLE"), 30, "the exporter to find the repository down")
        node.stop()
        # an admin edits the configuration: a new console user and another completion delay
        config = node.config.read_text().replace("stable_seconds = 1.0", "stable_seconds = 2.0")
        config = config.replace(f'users = {{ {USER} = "', f'users = {{ auditor = "{hash_password("other secret words", iterations=1000)}", {USER} = "')
        node.config.write_text(config)
        node.start()  # a restart while the repository is still down: the queue is in the database
        rsyslog.start()
        wait_for(lambda: _events(node, "ATNA_REPOSITORY_RESTORED"), 60, "the exporter to reach the repository")
        # the second start's messages go out with the restore; wait for the count to settle on them
        expected_starts = len(_events(node, "NODE_STARTED"))
        wait_for(lambda: sum('originalText="Application Start"' in r["msg"] for r in rsyslog.received())
                 >= expected_starts, 30, "both application start messages")
    finally:
        node.stop()
        pacs.stop()

    # nothing lost, nothing twice: exactly the messages the audit rows map to, each once (the node's last
    # stop flushed its own stop message; the repository writes what it took at once)
    expected = _expected_messages(node)
    wait_for(lambda: len(rsyslog.received()) >= expected, 30, f"{expected} messages at the repository")
    received = rsyslog.received()
    assert len(received) == expected
    for record in received:  # RFC 5424 header as rsyslog parsed it (ITI-20: PRI facility 10, MSGID)
        assert record["version"] == "1" and record["app"] == "dicomnode" and record["msgid"] == "IHE+RFC-3881"
        assert record["pri"] in ("84", "85") and record["sd"] == "-" and record["procid"].isdigit()
    assert len({r["msg"] for r in received}) == len(received), "a message arrived twice"
    kinds: dict[str, list[ET.Element]] = {}
    for record in received:
        root, kind = _parsed(record)
        kinds.setdefault(kind, []).append(root)
        assert root.find("AuditSourceIdentification").attrib == {"AuditSourceID": "LUNG-NODE-1",
                                                                 "AuditEnterpriseSiteID": "TEST-HOSPITAL"}

    # application start and stop: one per start (2) and for the first stop, sent after the outage
    activity = kinds["110100/E"]
    types = [r.find("EventIdentification/EventTypeCode").get("csd-code") for r in activity]
    assert types.count("110120") == len(_events(node, "NODE_STARTED")) == 2
    assert types.count("110121") >= 1
    # association accepted: a User Authentication success naming the calling AE and its address
    logins = [r for r in kinds["110114/E"] if r.find("ActiveParticipant").get("UserID") == "SCANNER"]
    assert len(logins) == len(_events(node, "ASSOCIATION_ACCEPTED")) == 1
    assert logins[0].find("ActiveParticipant").get("NetworkAccessPointID") == "127.0.0.1"
    assert logins[0].find("EventIdentification").get("EventOutcomeIndicator") == "0"
    # the console's failed login: a User Authentication minor failure for that user name
    failed = [r for r in kinds["110114/E"] if r.find("ActiveParticipant").get("UserID") == "mallory"]
    assert len(failed) == 1 and failed[0].find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert failed[0].find("EventIdentification/EventTypeCode").get("csd-code") == "110122"

    with sqlite3.connect(node.data_dir / "audit.sqlite") as db:
        study_uid, patient_id, count = db.execute(
            "SELECT st.study_instance_uid, st.patient_id, count(i.id) FROM instances i JOIN series se ON i.series_id = se.id "
            "JOIN studies st ON se.study_id = st.id").fetchone()
        result_class = db.execute("SELECT sop_class_uid FROM deliveries").fetchone()[0]
    # instances received: one message for the association and study, with the instance count
    (received_msg,) = kinds["110104/C"]
    study = received_msg.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == study_uid
    assert [s.get("NumberOfInstances") for s in study.findall("SOPClass")] == [str(count)] == ["3"]
    roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserID") for p in received_msg.findall("ActiveParticipant")}
    assert roles["110153"] == "SCANNER"
    patient = received_msg.findall("ParticipantObjectIdentification")[1]
    assert patient.get("ParticipantObjectID") == patient_id
    # results exported: instances transferred (read) from the node to the PACS, for the same study
    (exported,) = kinds["110104/R"]
    assert exported.find("ParticipantObjectIdentification").get("ParticipantObjectID") == study_uid
    assert exported.find("ParticipantObjectIdentification/SOPClass").get("UID") == result_class
    destination = [p for p in exported.findall("ActiveParticipant") if p.find("RoleIDCode").get("csd-code") == "110152"]
    assert destination[0].get("UserID") == "PACS"
    # the configuration change, found at the restart: Security Alerts naming the keys and the user
    alerts = {r.find("EventIdentification/EventTypeCode").get("csd-code"): r for r in kinds["110113/E"]}
    assert "added auditor" in alerts["110137"].findtext("EventIdentification/EventOutcomeDescription")
    software = alerts["110131"].findtext("EventIdentification/EventOutcomeDescription")
    assert "series.stable_seconds" in software and "2.0" not in software  # key names, never values
    assert [e["message"] for e in _events(node, "USERS_CHANGED")] == ["console users changed since the last start: added auditor"]
    # the outage itself is in the node's own audit trail, once per process that met it
    assert 1 <= len(_events(node, "ATNA_REPOSITORY_UNREACHABLE")) <= 2
    with sqlite3.connect(node.data_dir / "audit.sqlite") as db:
        assert db.execute("SELECT messages_sent FROM atna_export").fetchone()[0] == len(received)


def test_a_repository_whose_certificate_the_ca_did_not_sign_gets_nothing(pki: Path, rsyslog: Rsyslog) -> None:
    """The node checks the repository's certificate against atna.ca_file: audit messages carry patient
    names and must not go to whoever answers on the port."""
    from datetime import datetime, timezone

    from dicomnode.atna import messages as m
    from dicomnode.atna.syslog import SyslogError, SyslogSender, frame

    rsyslog.start()
    now = datetime.now(timezone.utc)
    message = frame(m.application_activity(m.Source("N", "N", "h", 1), now, True), now, "h", 1)
    wrong = SyslogSender("127.0.0.1", rsyslog.port, "tls", 5, pki / "other-ca.crt", pki / "node.crt", pki / "node.key")
    with pytest.raises(SyslogError, match="certificate verify failed"):
        wrong.send([message])
    right = SyslogSender("127.0.0.1", rsyslog.port, "tls", 5, pki / "ca.crt", pki / "node.crt", pki / "node.key")
    right.send([message])
    right.close()
    wait_for(lambda: rsyslog.received(), 20, "the message from the correctly configured sender")
    assert [r["msg"].encode() for r in rsyslog.received()] == [message.partition(b" - ")[2]]
