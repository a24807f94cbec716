"""The DICOM conformance statement, generated from the lists the AE really uses.

`python -m dicomnode.conformance > docs/conformance.md` rewrites the committed document;
`python -m dicomnode.conformance --check docs/conformance.md` fails when it has drifted
(tests/web/test_conformance.py runs the same check).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from highdicom.sr import CodedConcept
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicomnode.atna.exporter import CATALOGUE
from dicomnode.atna.syslog import APP_NAME, MSGID
from dicomnode.config import AtnaSettings, NodeSettings, PriorsSettings, SenderSettings
from dicomnode.core.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from dicomnode.results.sr_codes import PROCEDURE_REPORTED, PROCESSING_ALGORITHM
from dicomnode.core.dimse import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE, STORED_STATUSES, SUCCESS
from dicomnode.priors.finder import QR_TRANSFER_SYNTAXES
from dicomnode.priors.retrieve import (
    CT_STORAGE,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from dicomnode.receive.negotiation import (
    ACCEPTED_TRANSFER_SYNTAXES,
    LOSSY_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    UNCOMPRESSED,
    negotiation_order,
)

VERIFICATION = "1.2.840.10008.1.1"
# what the result builders create (dicomnode.results) and the sender offers as SCU
RESULT_SOP_CLASSES = [
    (ComprehensiveSRStorage, "TID 1500 measurement report (default)"),
    (Comprehensive3DSRStorage, "TID 1500 with SCOORD3D points (results.sop_class = \"comprehensive3d\")"),
    (SecondaryCaptureImageStorage, "key slices with the nodules drawn (results.send_overlays)"),
    (SegmentationStorage, "nodule segmentation (results.send_seg)"),
]
SCU_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
STORE_STATUSES = [
    (SUCCESS, "Success", ("the instance is fsynced in the spool and recorded in the audit database; "
                          "also returned for a duplicate SOP Instance UID (the stored copy is kept)")),
    (OUT_OF_RESOURCES, "Refused: out of resources", ("free disk space below node.min_free_disk_mb, or the disk is full; "
                                                      "or the data set is larger than node.max_instance_mb")),
    (CANNOT_UNDERSTAND, "Error: cannot understand", ("the data set cannot be parsed or lacks SOP Class/Instance, "
                                                      "Study or Series Instance UID; a UID is not valid (PS3.5 9.1); "
                                                      "the request carried no data set; or the series already belongs "
                                                      "to another study")),
    (PROCESSING_FAILURE, "Processing failure", "the spool file or the audit row could not be written"),
]


def _code(concept: CodedConcept) -> str:
    """(value, scheme, "meaning") as PS3.16 writes a code."""
    return f'({concept.value}, {concept.scheme_designator}, "{concept.meaning}")'


# IHE RAD TF Supplement "AI Results" (AIR) Rev 1.1, Evidence Creator: what a result object must carry, and
# whether ours do. (requirement, met?, how / why not)
AIR_REQUIREMENTS: list[tuple[str, str, str]] = [
    ("Results are standard DICOM objects in the source study, with its patient and study attributes", "yes",
     "SR, SEG and overlays copy Patient/Study from the CT (dcentvfy-clean against the CT)"),
    ("The algorithm as Contributing Equipment (0018,A001)", "yes",
     f"Purpose of Reference {_code(PROCESSING_ALGORITHM)}, Manufacturer (`results.manufacturer`), "
     "Manufacturer's Model Name (model name), Software Versions (model version), in the SR and the SEG"),
    ("A Device UID (0018,1002) that changes whenever the algorithm changes", "partly",
     "derived from `results.device_name`, the model name and the weights SHA-256 the pipeline reports (the "
     "manifest's detector hash): new detector weights under the same name and version give a new UID; the "
     "same UID is the SR's Device Observer UID (TID 1004) and the SEG's Device Serial Number. Weights of the "
     "malignancy classifier alone changing do not change it yet: the pipeline reports only the detector hash"),
    ("Algorithm Identification (TID 4019) with the results", "yes",
     "name, version and parameters (weights SHA-256, engine) in every SR measurement group; Segment "
     "Algorithm Type AUTOMATIC with the same identification in each SEG segment"),
    ("Measurement Report (TID 1500) with Procedure Reported describing the imaging procedure", "yes",
     f"Procedure Reported {_code(PROCEDURE_REPORTED)}: the chest CT, not the algorithm"),
    ("Each finding a measurement group with Tracking Identifier and Tracking UID, finding type and site", "yes",
     "TID 1410 planar ROI on the key slice (SCOORD referencing the image), Nodule (SCT 27925004), finding "
     "category, Finding Site Lung with laterality, NUMs in UCUM, coded qualitative evaluations"),
    ("Segmentations as DICOM SEG, one segment per finding, with tracking identifiers", "yes, `results.send_seg`",
     "BINARY SEG, \"Lung nodule <n>\" segments with TrackingID \"Nodule <n>\" and the SR's Tracking UID"),
    ("SR measurements reference the segment they were made on (TID 1411)", "yes, `results.send_seg`",
     "a TID 1411 group per nodule: Referenced Segment (SEG instance, segment number) and Source series for "
     "segmentation, with the same Tracking Identifier and UID as the planar group and the SEG segment; "
     "the SEG is listed in the SR's evidence"),
    ("3D coordinates (Comprehensive 3D SR, SCOORD3D) for viewers that use them", "yes, `results.sop_class`",
     "`comprehensive3d`: the nodule's world centre as SCOORD3D POINT (INFERRED FROM the mean diameter), the "
     "planar SCOORD kept; `comprehensive` stays the default because OHIF 3.13 and Orthanc Stone draw SCOORD"),
    ("Image Library (TID 1600) of the images the findings are on", "yes", "the key slices"),
    ("Standard codes, a private scheme only where none exists, declared", "partly",
     "Lung-RADS categories and the concepts of section 10.2 have no DICOM/SNOMED code: 99DCMNODE_LRADS and "
     "99DCMNODE, declared in the Coding Scheme Identification Sequence"),
    ("Key Object Selection of the key images", "no", "not produced; the SR's Image Library lists the key slices"),
    ("Presentation states for image overlays (AIR does not define burned-in images)", "no",
     "the overlays are Secondary Capture images marked NOT FOR DIAGNOSTIC USE (`results.send_overlays`), "
     "outside the profile; no GSPS is produced"),
    ("Parametric maps", "n/a", "the model gives no per-voxel map"),
]


def _air_section() -> list[str]:
    out = [
        "## 10. IHE AI Results (AIR Rev 1.1): result content",
        "",
        "The node is an AIR Evidence Creator; results reach the archive by C-STORE (section 4).",
        "",
        "| Requirement | Met | How, or why not |",
        "|---|---|---|",
    ]
    out += [f"| {req} | {met} | {how} |" for req, met, how in AIR_REQUIREMENTS]
    out += [
        "",
        "Validation: every result kind passes dciodvfy, dsrdump and dcentvfy (tests/results/test_validation.py);",
        "dicom3tools 2022-06 does not yet list Device UID in the Contributing Equipment item and says so (tolerated).",
        "",
        "### 10.1 Seen in OHIF v3.13.2 (an AIR Image Display)",
        "",
        "- The SR opens on the first finding's key slice with the finding drawn (tests/viewer, LIDC and a phantom,",
        "  each opened in fresh browsers and re-opened in the same page). Sometimes OHIF shows that slice bare: its SR",
        "  viewport stores the tracking UIDs to draw in a React effect after the element is enabled",
        "  (`OHIFCornerstoneSRMeasurementViewport.tsx`, `setTrackingIdentifiers`) and",
        "  `tools/modules/dicomSRModule.js` `setTrackingUniqueIdentifiersForElement` requests no annotation render,",
        "  while `DICOMSRDisplayTool.renderAnnotation` draws only those UIDs; when the image renders first, nothing",
        "  draws the finding until the next render. A resize of the same slice draws it, so the annotation is in",
        "  OHIF's state on the right image: no content of the SR decides when OHIF renders, and none avoids it.",
        "  Measured with that bundle instrumented and the browser's CPU throttled 4x (phantom, fresh browsers): in",
        "  4 of 6 openings the first slice was rendered twice before the tracking UIDs were stored, and stayed",
        "  bare; with one `viewport.render()` added after they are stored, 6 of 6 showed the finding. The viewer test",
        "  tells this race apart with one same-slice re-render (`DICOMNODE_OHIF_CPU_THROTTLE=4` makes it frequent).",
        "- The finding site is labelled \"363698007: Lung\": OHIF's `_processTID1410Measurement`",
        "  (`getSopClassHandlerModule.ts`) labels any SCT Finding Site with the constant code value 363698007 and",
        "  the site's Code Meaning, and `DICOMSRDisplayTool` shortens only a few labels; the meaning (\"Lung\") is ours,",
        "  the prefix is not. The text box shows the first 5 labels, NUMs first, so with our 7 NUMs the site is not",
        "  drawn on the image. Only a group without a top-level SCOORD (NUMs INFERRED FROM the outline) would get",
        "  free text (a Comment) as its first label, and still as \"<text>: \"; that gives up the TID 1410 planar",
        "  ROI group TID 1500 and AIR define for an image region, so it is not done.",
        "",
    ]
    return out + _private_codes_section()


def private_concepts() -> list[CodedConcept]:
    """Every concept of the private scheme the SR's code table (dicomnode.results.sr_codes) defines, once each, in the
    order it defines them: a name, or a value in one of its value sets."""
    from dicomnode.results import sr_codes as sr

    found: dict[str, CodedConcept] = {}
    for value in vars(sr).values():
        for concept in value.values() if isinstance(value, dict) else [value]:
            if isinstance(concept, CodedConcept) and concept.scheme_designator == sr.PRIVATE_SCHEME:
                found.setdefault(concept.value, concept)
    return list(found.values())


def _private_codes_section() -> list[str]:
    from dicomnode.results.sr_codes import PRIVATE_SCHEME

    out = [
        f"### 10.2 The private codes ({PRIVATE_SCHEME})",
        "",
        "Used only where DICOM PS3.16 and SNOMED CT have no code for the concept (dicomnode.results.sr_codes says",
        "why for each); the Lung-RADS categories are coded in 99DCMNODE_LRADS.",
        "",
        "| Code | Meaning |",
        "|---|---|",
    ]
    return out + [f"| {c.value} | {c.meaning} |" for c in private_concepts()] + [""]


def _uid_table(rows: list[tuple[str, str]], headers: tuple[str, str, str]) -> list[str]:
    lines = [f"| {headers[0]} | {headers[1]} | {headers[2]} |", "|---|---|---|"]
    lines += [f"| {UID(uid).name} | `{uid}` | {note} |" for uid, note in rows]
    return lines


def generate() -> str:
    node, sender = NodeSettings(), SenderSettings()
    order = negotiation_order()
    out = [
        "# DICOM Conformance Statement: dicomnode",
        "",
        "<!-- Generated by `python -m dicomnode.conformance`; do not edit by hand. A test fails when",
        "     this file differs from what the code accepts and sends. -->",
        "",
        "## 1. Overview",
        "",
        "dicomnode is a DICOM application entity that receives CT series (Storage SCP), analyses chest CT for lung",
        "nodules, and sends the results back (Storage SCU): a TID 1500 Structured Report, secondary-capture images",
        "with the nodules drawn, and optionally a Segmentation. Results are not for clinical use.",
        "",
        "| SOP class | Role |",
        "|---|---|",
        "| Verification | SCP and SCU (`dicomnode echo`) |",
        f"| {len(STORAGE_SOP_CLASSES)} storage SOP classes (section 3) | SCP |",
        f"| {len(RESULT_SOP_CLASSES)} result storage SOP classes (section 4) | SCU |",
        "| Storage Commitment Push Model (section 6) | SCU, per destination (`storage_commitment`) |",
        "| DICOMweb STOW-RS (sections 7 and 8) | origin server (`POST /dicom-web/studies`); user agent, per destination (`type = \"dicomweb\"`) |",
        "| IHE ATNA Record Audit Event (section 9) | Secure Application: audit messages over syslog (`[atna]`) |",
        "| IHE AI Results, result content (section 10) | Evidence Creator: TID 1500 SR (TID 1411 references to the SEG), SEG |",
        "| Study Root Query/Retrieve FIND, MOVE, GET (section 11) | SCU, for priors (`[priors]`) |",
        "",
        "## 2. Application entity and association policy",
        "",
        f"- AE title: configurable (`node.ae_title`, default `{node.ae_title}`), port `node.port` (default {node.port}).",
        "- The called AE title must equal the node's AE title; otherwise the association is rejected",
        "  (rejected-permanent, service user, reason 7 \"called AE title not recognised\").",
        "- When `security.allowed_calling_aes` is set, other calling AE titles are rejected (reason 3); when",
        "  `security.allowed_hosts` is set, other peer addresses are rejected (reason 1). Every refusal is audited.",
        f"- At most `node.max_associations` concurrent associations (default {node.max_associations}) for the whole",
        "  node, over all its receiver processes (`node.receive_processes`, one port); more are",
        "  rejected (rejected-transient, service provider, reason 2 \"local limit exceeded\") and audited. Maximum PDU",
        f"  size `node.max_pdu_size` (default {node.max_pdu_size}, 0 = unlimited); network timeout",
        f"  {node.network_timeout_s:g} s. A connection that sends no A-ASSOCIATE-RQ within",
        f"  `node.idle_connection_timeout_s` (default {node.idle_connection_timeout_s:g} s) is closed and audited.",
        "- Optional TLS 1.2+ (`[tls]`), with client certificates required by default.",
        "- The node initiates associations only to deliver results (section 4) and, with `[priors]`, to query",
        "  and retrieve a patient's prior exam (section 11).",
        "",
        "## 3. Storage SCP",
        "",
        "### 3.1 Transfer syntaxes",
        "",
        "The node never transcodes: instances are stored byte for byte as received. For each presentation",
        "context the first of the following that the sender proposes is accepted (lossless compressed first,",
        "then uncompressed, then lossy, so the stored copy keeps all the sender has).",
        "",
        "| Order | Transfer syntax | UID | Lossy |",
        "|---|---|---|---|",
    ]
    names = dict(ACCEPTED_TRANSFER_SYNTAXES)
    for i, uid in enumerate(order, start=1):
        out.append(f"| {i} | {names[uid]} | `{uid}` | {'yes' if uid in LOSSY_TRANSFER_SYNTAXES else 'no'} |")
    out += [
        "",
        "### 3.2 C-STORE response statuses",
        "",
        "| Status | Meaning | When |",
        "|---|---|---|",
    ]
    out += [f"| `0x{code:04X}` | {meaning} | {when} |" for code, meaning, when in STORE_STATUSES]
    out += [
        "",
        "A series is complete when no instance arrived for `series.stable_seconds` after the last association",
        "that carried it was released; a later instance re-opens it and the results are superseded (same UIDs).",
        "It is complete sooner, `series.evidence_grace_seconds` (default 1.5 s) after that association's",
        "A-RELEASE, when no other association is still sending it and its instances show a whole series: one",
        "multi-frame instance, or at least 3 single-frame images with Image Position and Image Orientation",
        "(Patient), one orientation, evenly spaced along the slice normal (within 1 % or 0.01 mm) with no gap",
        "and no duplicate position, the spacing no wider than Slice Thickness, and as many images as Images in",
        "Acquisition (0020,1002) says where the instances state it. An A-ABORT is no such evidence. A sender",
        "that splits a series over several associations should keep one open until the last is sent, or",
        "expect the series to be analysed again when a later part arrives.",
        "",
        "### 3.3 Storage SOP classes accepted",
        "",
    ]
    out += _uid_table([(uid, "") for uid in STORAGE_SOP_CLASSES], ("SOP class", "UID", "Note"))
    out += [
        "",
        "## 4. Storage SCU (result delivery)",
        "",
        "Results go to the destinations of the route that matched the series (`[destinations]`, or back to the",
        "calling AE). All objects for one destination share one association. Each object is proposed in:",
        "",
    ]
    out += [f"- {UID(ts).name} (`{ts}`)" for ts in SCU_TRANSFER_SYNTAXES]
    out += ["", "Result SOP classes:", ""]
    out += _uid_table([(uid, note) for uid, note in RESULT_SOP_CLASSES], ("SOP class", "UID", "Sent when"))
    out += [
        "",
        f"- Success, and the warnings {', '.join(f'`0x{c:04X}`' for c in sorted(STORED_STATUSES) if c)}, count as delivered; any other status, a refused",
        "  association or a lost connection is a failed attempt.",
        f"- Failed attempts are retried with exponential backoff (default {sender.backoff_initial_s:g} s doubling up to",
        f"  {sender.backoff_max_s:g} s); after `sender.max_attempts` (default {sender.max_attempts}) the delivery is a",
        "  dead letter, re-sent with `dicomnode retry` or the console's dead-letter page.",
        "- Result UIDs are derived from the source series, model version and settings, so a re-send replaces",
        "  rather than duplicates.",
        "- `dicomnode send` (a manual SCU) proposes each file's own SOP class in its own transfer syntax.",
        "- Forwarded source instances (a route's `forward_to`) go through the same deliveries: each received SOP",
        "  class is proposed in the transfer syntax of the stored file in a presentation context of its own (and in",
        "  the two above), and sent as received; a destination that accepts neither the file's syntax nor, for",
        "  the uncompressed ones, a convertible one gets a failed attempt that names the syntax.",
        "",
        "## 5. Verification",
        "",
        f"C-ECHO is answered as SCP (transfer syntaxes: {', '.join(UID(u).name for u in UNCOMPRESSED)})",
        f"and issued as SCU by `dicomnode echo` (`{VERIFICATION}`).",
        "",
    ]
    out += _storage_commitment(sender)
    out += dicomweb_sections()
    out += _atna_section()
    out += _air_section()
    out += _priors_section()
    return "\n".join(out)


def _atna_section() -> list[str]:
    """IHE ATNA Secure Application actor, Record Audit Event (ITI-20), from the exporter's catalogue."""
    atna = AtnaSettings()
    out = [
        "## 9. Audit trail: IHE ATNA (Record Audit Event, ITI-20)",
        "",
        "With `[atna] enabled = true` the node sends its audit trail to the hospital's audit repository as DICOM",
        "audit messages (PS3.15 A.5, the DICOM audit message schema, one XML document per message, UTF-8).",
        "",
        f"- Transport: syslog, RFC 5424 messages (PRI facility 10, APP-NAME `{APP_NAME}`, MSGID `{MSGID}`, no",
        "  structured data), over TLS per RFC 5425 with octet-counting framing (default; the repository's CA in",
        "  `atna.ca_file`, the node's client certificate in `atna.cert_file`/`key_file`), the same frames over plain",
        "  TCP, or UDP per RFC 5426 (no acknowledgement: a lost datagram is not sent again).",
        "- Queue: the audit database's events table; the last event handed to the repository is kept there",
        "  (`atna_export`). While the repository is down the node keeps working and retries with backoff",
        f"  ({atna.backoff_initial_s:g} s doubling to {atna.backoff_max_s:g} s by default), records `ATNA_REPOSITORY_UNREACHABLE`",
        "  (900) once per outage and `ATNA_REPOSITORY_RESTORED` (901), then sends everything queued, in order,",
        "  across node restarts. Delivery is at-least-once: a message counts as sent",
        "  once written to the TCP/TLS connection; a crash or a connection that breaks between that write and the",
        "  queue position's commit sends the batch again (a repository may see a message twice, never lose one).",
        "- AuditSourceID: `atna.audit_source_id` (default the AE title); AuditEnterpriseSiteID:",
        "  `atna.enterprise_site_id`; AuditSourceTypeCode 4 (application server process).",
        "- Events audited before ATNA was first enabled are not sent; after it was turned off and on again, what",
        "  was recorded meanwhile is. The repository's certificate must name `atna.host` (checked, as is its CA).",
        "",
        "| Node events | DICOM EventID | Action | Content |",
        "|---|---|---|---|",
    ]
    for codes, event_id, action, note in CATALOGUE:
        names = ", ".join(f"`{c.name}` ({int(c)})" for c in codes)
        out.append(f"| {names} | ({event_id.value}, {event_id.scheme}, \"{event_id.meaning}\") | {action} | {note} |")
    out += [
        "",
        "Query (110112): one message per C-FIND for priors (section 11), the Study Root FIND SOP class, the",
        "query data set (Implicit VR Little Endian, base64) and whether the peer answered.",
        "",
    ]
    return out


def _priors_section() -> list[str]:
    """Query/Retrieve SCU for priors (dicomnode.priors), from the contexts it requests."""
    priors = PriorsSettings()
    qr = [(StudyRootQueryRetrieveInformationModelFind, "study, then series (and image) level"),
          (StudyRootQueryRetrieveInformationModelMove, "`priors.method = \"c-move\"` (default)"),
          (StudyRootQueryRetrieveInformationModelGet, "`priors.method = \"c-get\"`")]
    out = [
        "## 11. Query/Retrieve SCU (priors for follow-up comparison)",
        "",
        "With `[priors] enabled = true` the node looks for a follow-up's prior: the patient's most recent earlier",
        "chest CT. First among the studies it already analysed (its own audit database, no network), then on the",
        "peers in `priors.peers`, in order. The prior is stored through the same durable intake as any received",
        "instance, marked as a prior: it starts no job of its own and is never delivered.",
        "",
        "| SOP class | UID | Use |",
        "|---|---|---|",
    ]
    out += [f"| {UID(str(uid)).name} | `{uid}` | {note} |" for uid, note in qr]
    out += [
        "",
        "Transfer syntaxes offered for these: " + ", ".join(f"`{t}`" for t in QR_TRANSFER_SYNTAXES) + ".",
        "",
        "- C-FIND, STUDY level: PatientID, IssuerOfPatientID (the current exam's, or a return key),",
        "  ModalitiesInStudy `CT`, StudyDate range from `priors.lookback_years` before the current StudyDate to the",
        "  day before it; return keys PatientName, PatientBirthDate, StudyInstanceUID, StudyDescription. The",
        "  answers are checked again by the node (date range, not the current study). SERIES level for the most",
        "  recent studies: SeriesInstanceUID, Modality, SeriesDescription, BodyPartExamined, SeriesNumber,",
        "  NumberOfSeriesRelatedInstances, SliceThickness, ImageType; where a peer gives no slice thickness or",
        "  image type at series level, IMAGE level for them. A series is suitable when the current series' route",
        "  (its rules without `calling_ae`) would match it; the preferred one is axial, thinnest, most slices.",
        "- Retrieval at SERIES level (StudyInstanceUID, SeriesInstanceUID) from `priors.retrieve_from` (default:",
        "  the peer that answered). C-MOVE: Move Destination is the node's own AE title; the peer sends the",
        "  instances to the node's Storage SCP (section 3) on its own association, so it must know the node's AE",
        "  title, host and port, and `security.allowed_calling_aes`/`allowed_hosts`, where set, must admit it.",
        "  C-GET: the node takes the SCP role (SCP/SCU role selection) for the CT storage SOP classes, each",
        "  offered with the transfer syntaxes of section 3.1; nothing is set up on the peer:",
        "  " + ", ".join(f"{UID(str(c)).name} (`{c}`)" for c in CT_STORAGE) + ".",
        "- A retrieval counts only when its final response is Success (`0x0000`) or Warning (`0xB000`) with no",
        "  failed sub-operation and at least one instance arrived; any other status (e.g. `0xA801` move",
        "  destination unknown, `0xA701`/`0xA702` out of resources, `0xC000`), an abort or no answer is a failure:",
        "  audited with the status and Error Comment, and the exam is analysed without comparison.",
        "- Patient safety: the prior must have the same PatientID, the same IssuerOfPatientID when either exam has",
        "  one, and the same PatientName (compared case-blind, per ^ component, trailing empty components",
        "  dropped) and PatientBirthDate when both exams carry them. Checked on the C-FIND answer and on every",
        f"  retrieved instance: on C-GET an instance of another series or patient is answered `0x{CANNOT_UNDERSTAND:04X}` and",
        "  not stored; after a C-MOVE the stored instances are read back. Any mismatch: no comparison, audited",
        "  (PRIOR_PATIENT_MISMATCH).",
        f"- Time: `priors.query_timeout_s` (default {priors.query_timeout_s:g} s) per peer for the C-FINDs,",
        f"  `priors.retrieve_timeout_s` (default {priors.retrieve_timeout_s:g} s) for the retrieval (each is a bound on",
        "  the association, the responses and the whole operation: the association is aborted when it runs out),",
        f"  both within `priors.max_wait_s` (default {priors.max_wait_s:g} s) for the whole search and retrieval.",
        "",
    ]
    return out + _follow_up_sr_section()


def _follow_up_sr_section() -> list[str]:
    """What the TID 1500 SR of a follow-up says about the prior (dicomnode.results.sr_follow_up, issue 12)."""
    from dicomnode.results import sr_codes as sr

    per_nodule = [(sr.CHANGE_SINCE_PRIOR, "CODE: " + ", ".join(_code(c) for c in sr.CHANGE_STATUS.values())),
                  (sr.PRIOR_DIAMETER, "NUM mm (derivation Mean)"), (sr.PRIOR_VOLUME, "NUM mm3"),
                  (sr.VOLUME_CHANGE, "NUM %"), (sr.DIAMETER_CHANGE, "NUM mm"), (sr.INTERVAL, "NUM d"),
                  (sr.DOUBLING_TIME, "NUM d when growing; TEXT \"not growing\" otherwise"),
                  (sr.GROWTH_FLAG, "CODE Present/Absent")]
    report = [(sr.PRIOR_COMPARISON, "TEXT: what was compared, or \"prior not available: <reason>\""),
              (sr.PRIOR_STUDY, "TEXT: the prior's Study Instance UID"),
              (sr.PRIOR_REPORT, "TEXT: the SOP Instance UID of the prior's SR, when the node made one"),
              (sr.RESOLVED, "TEXT, one per prior nodule not seen again (with its Tracking UID)")]
    out = [
        "### 11.1 The comparison in the results",
        "",
        "A follow-up's SR carries in each nodule's measurement group (TID 1410) the change since the prior; a",
        "nodule matched with a prior nodule keeps the prior SR's Tracking Unique Identifier (and its SEG segment",
        "the same), and its Lung-RADS category, like the exam's at report level, is the v2022 follow-up category.",
        "",
        "| Concept (per nodule) | Value |",
        "|---|---|",
    ]
    out += [f"| {_code(c)} | {v} |" for c, v in per_nodule]
    out += ["", "| Concept (report level, Qualitative Evaluations container) | Value |", "|---|---|"]
    out += [f"| {_code(c)} | {v} |" for c, v in report]
    return out + [""]


def dicomweb_sections() -> list[str]:
    """STOW-RS as origin server (dicomnode.web.stow) and as user agent (dicomnode.deliver.dicomweb)."""
    from dicomnode.config import WebSettings
    from dicomnode.deliver import dicomweb
    from dicomnode.web import stow

    web = WebSettings()
    out = [
        "## 7. DICOMweb STOW-RS origin server",
        "",
        "The node's HTTP server (`[web]`) implements the Studies Store transaction (PS3.18 10.5):",
        "`POST /dicom-web/studies` and `POST /dicom-web/studies/{StudyInstanceUID}`.",
        "",
        f"- Request: `multipart/related; type=\"{stow.DICOM_TYPE}\"`, one DICOM PS3.10 instance per part. Any other",
        "  content type, including the metadata-and-bulk-data forms (`application/dicom+json`, `+xml`), is refused",
        "  with 415 before the body is read.",
        "- Authentication as the REST API: an API token (`Authorization: Bearer`, `web.api_tokens`) or a console",
        "  session; 401 otherwise (nothing read, nothing stored). A console bound to loopback without",
        "  `web.require_login` is open.",
        "- Instances go through the same intake as C-STORE: each is fsynced to the spool and recorded in the audit",
        "  database before the answer, duplicates (same SOP Instance UID) are acknowledged and not stored again,",
        "  and the end of the request starts the completion clock of the series it carried (section 3.2; a whole",
        "  request counts as an A-RELEASE), after which they are routed like any other. The calling AE recorded is",
        f"  `{stow.STOW_AE}`.",
        f"- Limits: the body `web.max_upload_mb` (default {web.max_upload_mb}) -> 413; a part over",
        "  `node.max_instance_mb` fails alone with `0xA700`; at most `web.max_zip_members` parts",
        f"  (default {web.max_zip_members}) -> 413. A body that is malformed or ends before its closing boundary is",
        "  refused with 400. Any whole-request refusal stores nothing and is audited (STOW_REJECTED).",
        "- Response: the Store Instances Response Module (PS3.18 Annex I) as `application/dicom+json`, or",
        "  `application/dicom+xml` (Native DICOM Model) when the Accept header prefers it. Referenced SOP",
        "  Sequence lists the stored instances (Retrieve URL empty: the node offers no WADO-RS); Failed SOP",
        "  Sequence the others with their Failure Reason. HTTP 200: all stored; 202: some failed; 409: none stored.",
        "",
        "| Failure Reason | When |",
        "|---|---|",
        f"| `0x{stow.OUT_OF_RESOURCES:04X}` | the part is over `node.max_instance_mb`, or the spool is full |",
        f"| `0x{stow.DOES_NOT_MATCH_SOP_CLASS:04X}` | the file meta's Media Storage SOP Class UID differs from the data set's SOP Class UID |",
        f"| `0x{stow.CANNOT_UNDERSTAND:04X}` | not a parseable DICOM PS3.10 instance, a required UID missing or invalid, a part"
        " whose Content-Type is not application/dicom, a series already known under another study, or (with a"
        " study in the URL) an instance of another study |",
        f"| `0x{stow.PROCESSING_FAILURE:04X}` | the instance could not be written or recorded |",
        "",
        "## 8. DICOMweb STOW-RS user agent (result delivery)",
        "",
        "A destination with `type = \"dicomweb\"` and `url` (http or https; credentials in the URL are refused)",
        "receives results (and a route's forwarded instances) by `POST <url>/studies`, through the same outbox,",
        "retries, backoff and dead letters as section 4.",
        "",
        f"- One `multipart/related; type=\"application/dicom\"` request per up to {dicomweb.MAX_INSTANCES_PER_REQUEST} due",
        "  deliveries, each part the PS3.10 file as in the outbox (or as received, for forwards); `Accept:",
        "  application/dicom+json`. The optional `Authorization` header value is read from `auth_header_env` or",
        "  `auth_header_file` at each send and never logged.",
        "- A delivery is delivered when the answer (200, 202 or 409) lists its SOP Instance UID in the Referenced",
        "  SOP Sequence (or on a 200 without a body). Listed in the Failed SOP Sequence, not listed, any other HTTP",
        "  status, or no connection: a failed attempt, retried; HTTPS certificates are verified (against",
        "  `tls.ca_file` when set, else the system's CAs).",
        "",
    ]
    return out


def _storage_commitment(sender: SenderSettings) -> list[str]:
    """Section 6: the Storage Commitment Push Model as SCU (dicomnode.deliver.commitment)."""
    syntaxes = ", ".join(UID(u).name for u in UNCOMPRESSED)
    return [
        "## 6. Storage Commitment Push Model (SCU)",
        "",
        f"SOP class Storage Commitment Push Model `{STORAGE_COMMITMENT_PUSH_MODEL}`, well-known SOP instance",
        f"`{STORAGE_COMMITMENT_INSTANCE}`; the node is the SCU, for destinations with `storage_commitment = true`",
        "(default false). Such a delivery is *committed* only when the destination's N-EVENT-REPORT confirms it;",
        "until then its state is `awaiting_commitment` and its file stays in the outbox.",
        "",
        "- Request: after the C-STOREs of one association, on that association (the Push Model proposed next to",
        "  the storage contexts, default roles), N-ACTION action type 1 with a new Transaction UID (0008,1195)",
        "  and a Referenced SOP Sequence (0008,1199) naming each instance stored on it. A status other than",
        "  `0x0000`, no response, or the context not accepted fails the attempt.",
        "- Reports are accepted on the same association, kept open `sender.commitment_linger_s` (default",
        f"  {sender.commitment_linger_s:g} s) after the N-ACTION response, or on a new association to the node's AE:",
        "  when a destination has `storage_commitment`, the SCP accepts the Push Model with SCP/SCU role",
        f"  selection, the requestor (the PACS) as SCP, in {syntaxes}. The association policy",
        "  of section 2 applies to it; the PACS must know the node's AE title, host and port.",
        "- Event type 1 (all committed) and 2 (some failed: Failed SOP Sequence (0008,1198) with Failure",
        "  Reason (0008,1197)) are read. An instance in the Referenced SOP Sequence is committed; one listed as",
        "  failed, or not named, is not: the delivery is retried with the backoff of section 4 (C-STORE and",
        "  N-ACTION again, under a new Transaction UID) and is a dead letter after `sender.max_attempts`.",
        f"- No report within `sender.commitment_timeout_s` (default {sender.commitment_timeout_s:g} s) of the N-ACTION",
        "  counts as a failure. Pending transactions are rows of the audit database: a restart keeps them.",
        "- A report is refused (N-EVENT-REPORT-RSP `0x0110`, audited as DELIVERY_COMMIT_REPORT_REFUSED, no",
        "  delivery changed) when its Transaction UID is unknown or already settled, its calling AE title is",
        "  not the destination's (on a new association also: the peer address is not the destination's host),",
        "  it names an instance (SOP class and instance) that is not in the transaction, it is event type 1",
        "  with failures, or it cannot be read. An event type other than 1 or 2 gets `0x0113`.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, help="exit 1 when this file differs from the generated statement")
    args = parser.parse_args(argv)
    text = generate()
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run `python -m dicomnode.conformance > {args.check}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
