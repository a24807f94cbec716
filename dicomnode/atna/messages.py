"""DICOM audit messages (PS3.15 A.5): the XML the node sends to an IHE ATNA audit repository.

Pure builders, no database: dicomnode.atna.exporter reads the audit events and calls these. The
element order and the required attributes follow the DICOM audit message schema (PS3.15 A.5.1):
EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*;
codes are DICOM's (DCM, PS3.16 CID 400-405) unless said otherwise.
"""
from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass(frozen=True)
class Code:
    """A coded value (the schema's CodedValueType: csd-code, codeSystemName, originalText)."""

    value: str
    meaning: str
    scheme: str = "DCM"


# EventID (CID 400)
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
# EventTypeCode (CID 401)
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
SECURITY_CONFIGURATION = Code("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "User security Attributes Changed")
# RoleIDCode (CID 402)
ROLE_APPLICATION = Code("110150", "Application")
ROLE_APPLICATION_LAUNCHER = Code("110151", "Application Launcher")
ROLE_DESTINATION = Code("110152", "Destination Role ID")
ROLE_SOURCE = Code("110153", "Source Role ID")
# ParticipantObjectIDTypeCode (CID 404, and RFC 3881's own numbers)
ID_STUDY = Code("110180", "Study Instance UID")
ID_SOP_CLASS = Code("110181", "SOP Class UID")
ID_NODE = Code("110182", "Node ID")
ID_PATIENT = Code("2", "Patient Number", "RFC-3881")
ID_URI = Code("12", "URI", "RFC-3881")
# AuditSourceTypeCode: 4 = application server process
SOURCE_APPLICATION_SERVER = Code("4", "Application Server Process")

# EventOutcomeIndicator
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"
# NetworkAccessPointTypeCode: 1 machine name, 2 IP address
NAP_NAME, NAP_IP = "1", "2"
# ParticipantObjectTypeCode / ParticipantObjectTypeCodeRole (RFC 3881)
OBJ_PERSON, OBJ_SYSTEM = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE = "1", "3", "13"


@dataclass(frozen=True)
class Source:
    """Who reports: the node (AuditSourceIdentification, and its own ActiveParticipant)."""

    audit_source_id: str
    ae_title: str
    host_name: str
    process_id: int
    enterprise_site_id: str = ""

    def participant(self, role: Code, requestor: bool = False) -> "Participant":
        return Participant(str(self.process_id), role, requestor, self.host_name,
                           alternative_user_id=f"AETITLES={self.ae_title}")


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a peer AE, a console user, or the node itself."""

    user_id: str
    role: Code | None
    requestor: bool
    network_access_point: str = ""
    alternative_user_id: str = ""
    user_name: str = ""


@dataclass(frozen=True)
class Study:
    """A study as a participant object, with the SOP classes and instance counts it is about."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    sop_classes: dict[str, int] = field(default_factory=dict)


def _iso(when: datetime) -> str:
    if when.tzinfo is None:  # the audit DB stores UTC; SQLite hands it back naive
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.value, "codeSystemName": code.scheme,
                                       "originalText": code.meaning})


def _message(event_id: Code, action: str, when: datetime, outcome: str, types: list[Code],
             description: str = "") -> tuple[ET.Element, ET.Element]:
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {"EventActionCode": action, "EventDateTime": _iso(when),
                                                        "EventOutcomeIndicator": outcome})
    _code(ident, "EventID", event_id)
    for t in types:
        _code(ident, "EventTypeCode", t)
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = description[:1024]
    return root, ident


def _participant(root: ET.Element, p: Participant) -> None:
    attrs = {"UserID": p.user_id or "unknown", "UserIsRequestor": "true" if p.requestor else "false"}
    if p.alternative_user_id:
        attrs["AlternativeUserID"] = p.alternative_user_id
    if p.user_name:
        attrs["UserName"] = p.user_name
    if p.network_access_point:
        attrs["NetworkAccessPointID"] = p.network_access_point
        attrs["NetworkAccessPointTypeCode"] = NAP_IP if _is_ip(p.network_access_point) else NAP_NAME
    el = ET.SubElement(root, "ActiveParticipant", attrs)
    if p.role is not None:
        _code(el, "RoleIDCode", p.role)


def _source(root: ET.Element, src: Source) -> None:
    attrs = {"AuditSourceID": src.audit_source_id}
    if src.enterprise_site_id:
        attrs["AuditEnterpriseSiteID"] = src.enterprise_site_id
    el = ET.SubElement(root, "AuditSourceIdentification", attrs)
    _code(el, "AuditSourceTypeCode", SOURCE_APPLICATION_SERVER)


def _object(root: ET.Element, object_id: str, id_type: Code, type_code: str, role: str) -> ET.Element:
    el = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    _code(el, "ParticipantObjectIDTypeCode", id_type)
    return el


def _studies(root: ET.Element, studies: list[Study]) -> None:
    """The studies, then each distinct patient (PS3.15 A.5.3: one study object per study, one patient)."""
    patients: dict[str, str] = {}
    for st in studies:
        el = _object(root, st.study_uid, ID_STUDY, OBJ_SYSTEM, ROLE_REPORT)
        if st.accession_number:
            ET.SubElement(el, "Accession", {"Number": st.accession_number})
        for sop_class, count in sorted(st.sop_classes.items()):
            ET.SubElement(el, "SOPClass", {"UID": sop_class, "NumberOfInstances": str(count)})
        patients.setdefault(st.patient_id, st.patient_name)
    for patient_id, name in patients.items():
        el = _object(root, patient_id or "unknown", ID_PATIENT, OBJ_PERSON, ROLE_PATIENT)
        if name:
            ET.SubElement(el, "ParticipantObjectName").text = name


# characters XML 1.0 forbids (ElementTree writes them as they are): C0 controls such as the ESC of an
# ISO 2022 patient name, lone surrogates, U+FFFE/U+FFFF
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _done(root: ET.Element) -> bytes:
    """One line of UTF-8: a line break in a text (a free-text reason) goes as a character reference,
    so a repository that splits or escapes at line ends keeps the message whole and readable; a
    character XML cannot carry becomes U+FFFD rather than making the whole message unreadable."""
    body = _NOT_XML.sub("\ufffd", ET.tostring(root, encoding="unicode"))
    body = body.replace("\r", "&#13;").replace("\n", "&#10;")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode("utf-8")


def application_activity(src: Source, when: datetime, started: bool, description: str = "",
                         launcher: str = "") -> bytes:
    """PS3.15 A.5.3.1: the node started or stopped."""
    root, _ = _message(APPLICATION_ACTIVITY, "E", when, SUCCESS, [APPLICATION_START if started else APPLICATION_STOP],
                       description)
    _participant(root, src.participant(ROLE_APPLICATION))
    if launcher:
        _participant(root, Participant(launcher, ROLE_APPLICATION_LAUNCHER, True))
    _source(root, src)
    return _done(root)


def user_authentication(src: Source, when: datetime, user: Participant, ok: bool, logout: bool = False,
                        description: str = "") -> bytes:
    """PS3.15 A.5.3.12: a console login or logout, or a DICOM peer's association (its AE title is the user)."""
    root, _ = _message(USER_AUTHENTICATION, "E", when, SUCCESS if ok else MINOR_FAILURE,
                       [LOGOUT if logout else LOGIN], description)
    _participant(root, user)
    _participant(root, src.participant(ROLE_APPLICATION))  # the node that authenticated the user
    _source(root, src)
    return _done(root)


def security_alert(src: Source, when: datetime, kind: Code, performer: Participant | None, subject: str,
                   subject_type: Code, ok: bool, description: str = "") -> bytes:
    """PS3.15 A.5.3.11: a refused peer (Node Authentication), an admin's change (configuration,
    restricted function). The subject is what the alert is about (a peer's address, a URI)."""
    root, _ = _message(SECURITY_ALERT, "E", when, SUCCESS if ok else MINOR_FAILURE, [kind], description)
    _participant(root, src.participant(ROLE_APPLICATION))  # the reporting process
    if performer is not None:
        _participant(root, performer)
    _source(root, src)
    el = _object(root, subject, subject_type, OBJ_SYSTEM, ROLE_SECURITY_RESOURCE)
    if description:
        ET.SubElement(el, "ParticipantObjectDescription").text = description[:1024]
    return _done(root)


def instances_transferred(src: Source, when: datetime, sender: Participant, receiver: Participant,
                          studies: list[Study], created: bool, ok: bool = True, description: str = "") -> bytes:
    """PS3.15 A.5.3.7: instances received (created: action C) or sent on (action R)."""
    root, _ = _message(INSTANCES_TRANSFERRED, "C" if created else "R", when, SUCCESS if ok else MINOR_FAILURE, [],
                       description)
    _participant(root, sender)
    _participant(root, receiver)
    _source(root, src)
    _studies(root, studies)
    return _done(root)


def study_deleted(src: Source, when: datetime, studies: list[Study], description: str = "") -> bytes:
    """PS3.15 A.5.3.8: files of a study removed (retention)."""
    root, _ = _message(STUDY_DELETED, "D", when, SUCCESS, [], description)
    _participant(root, src.participant(ROLE_APPLICATION, requestor=True))
    _source(root, src)
    _studies(root, studies)
    return _done(root)


def query(src: Source, when: datetime, requestor: Participant, responder: Participant, sop_class_uid: str,
          query_dataset: bytes, transfer_syntax_uid: str, ok: bool = True) -> bytes:
    """PS3.15 A.5.3.10: a C-FIND for priors (event PRIOR_QUERY, dicomnode.priors): the query data set
    goes base64-encoded, as the schema says."""
    root, _ = _message(QUERY, "E", when, SUCCESS if ok else MINOR_FAILURE, [])
    _participant(root, requestor)
    _participant(root, responder)
    _source(root, src)
    el = _object(root, sop_class_uid, ID_SOP_CLASS, OBJ_SYSTEM, ROLE_REPORT)
    ET.SubElement(el, "ParticipantObjectQuery").text = base64.b64encode(query_dataset).decode("ascii")
    ET.SubElement(el, "ParticipantObjectDetail", {
        "type": "TransferSyntax", "value": base64.b64encode(transfer_syntax_uid.encode()).decode("ascii")})
    return _done(root)
