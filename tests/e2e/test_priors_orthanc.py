"""Priors from a real PACS (issue 12, parts 2 and 3): Orthanc holds the patient's earlier chest CT; the node
finds it by C-FIND (study, then series level), retrieves it by C-MOVE (to its own AE title, so the
instances arrive on its SCP) and by C-GET (on its own association), and the prior lands in the spool
marked as a prior: rows, files, events; it starts no job and no delivery. A prior of the same PatientID
but another birth date is refused; a PACS that is down or never answers gives "prior not available"
with the reason, audited."""
from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomnode.config import PriorPeer, Settings, load_settings
from dicomnode.node import Node
from dicomnode.priors.service import PriorService
from dicomnode.receive.intake import Origin
from storage.events import EventCode
from storage.models import Delivery, Event, FindingRow, Instance, Job, PriorRetrieval, Series, Study
from storage.states import JobState, PriorRetrievalState, SeriesRole, SeriesState
from tests.node.helpers import free_port, wait_for
from tests.process.prior_helpers import STATUS_MEANING, items, meaning, nearest, nodule_groups, report_texts
from tests.peers.orthanc import OrthancProcess, orthanc_binary

pytestmark = pytest.mark.skipif(orthanc_binary() is None, reason="Debian package orthanc is not installed (.ci/run installs it)")

NODE_AE = "DICOMNODE"
LUNG_AE = "LUNGNODE"


@dataclass
class Exam:
    files: list[Path]
    study_uid: str
    series_uid: str


def write_exam(source: list[Path], out: Path, patient_id: str, study_date: str, birth: str = "19550312",
               name: str = "Doe^Jane") -> Exam:
    """A copy of the phantom series as another exam: the given patient and date, its own UIDs."""
    out.mkdir(parents=True)
    study_uid, series_uid = (generate_uid(entropy_srcs=[str(out), part]) for part in ("study", "series"))
    files = []
    for path in source:
        ds = dcmread(path)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient_id, name, birth
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(out), path.name])
        ds.save_as(out / path.name, enforce_file_format=True)
        files.append(out / path.name)
    return Exam(files, study_uid, series_uid)


MIXED = 2  # instances of another patient (birth date) in a prior series


def mix_in_another_birth_date(files: list[Path]) -> None:
    for path in files:
        ds = dcmread(path)
        ds.PatientBirthDate = "19610101"
        ds.save_as(path, enforce_file_format=True)


@dataclass
class Setup:
    node: Node
    orthanc: OrthancProcess
    current: dict[str, int]  # patient id -> the current series' row id
    priors: dict[str, Exam]  # patient id -> the prior exam in Orthanc
    older: Exam  # PAT-GET's exam before its prior
    lung_port: int  # Orthanc knows LUNGNODE there: the lung-nodule node of the comparison tests


def node_settings(root: Path, node_port: int, orthanc: OrthancProcess) -> Settings:
    (root / "node.toml").write_text(f"""
[series]
stable_seconds = 0.5
poll_seconds = 0.2
[jobs]
poll_seconds = 0.2
[web]
enabled = false
[[routes]]
name = "chest-ct"
pipeline = "tests.node.pipelines:summary_pipeline"
destinations = ["PACS"]
[routes.match]
modality = ["CT"]
min_slices = 16
max_slice_thickness_mm = 3.0
[destinations.PACS]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
[priors]
enabled = true
lookback_years = 3
method = "c-move"
query_timeout_s = 20
retrieve_timeout_s = 60
max_wait_s = 120
[[priors.peers]]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
""")
    return load_settings(root / "node.toml", {"node.data_dir": root / "data", "node.port": node_port,
                                              "node.host": "127.0.0.1", "node.ae_title": NODE_AE,
                                              "node.min_free_disk_mb": 1})


def store_current(node: Node, exam: Exam) -> None:
    """The current exam, received as from a scanner."""
    with node.intake.open(Origin(None, "SCANNER", "127.0.0.1")) as session:
        for path in exam.files:
            assert session.store(path.read_bytes()).status == 0x0000


def routed_id(node: Node, exam: Exam) -> int:
    """The current series' row id, once it is routed (analysed as usual)."""
    def routed() -> int | None:
        with node.db.session() as s:
            row = s.execute(select(Series.id, Series.status).where(Series.series_instance_uid == exam.series_uid)).first()
        return row.id if row is not None and row.status == SeriesState.ROUTED else None
    return int(wait_for(routed, 30, "the current series to be routed"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("priors")
    node_port, lung_port = free_port(), free_port()
    orthanc = OrthancProcess(root / "orthanc", dicomweb=False, modalities={"NODE": [NODE_AE, "127.0.0.1", node_port],
                                                                   LUNG_AE: [LUNG_AE, "127.0.0.1", lung_port],
                                                                   # known, but nothing listens at its port
                                                                   "STRANGER": ["STRANGER", "127.0.0.1", free_port()]})
    orthanc.start()
    node = Node(node_settings(root, node_port, orthanc))
    node.start()
    try:
        from inference.phantom import write_phantom_series

        # one small phantom (20 thin slices) for every exam
        source = write_phantom_series(root / "phantom", 31, matrix=64, n_slices=20, n_nodules=1,
                                      slice_thickness_mm=2.0, slice_spacing_mm=2.0).files
        # per patient: the prior (a year earlier) in Orthanc, the current exam at the node
        births = {"PAT-MOVE": "19550312", "PAT-GET": "19550312", "PAT-MISMATCH": "19600101", "PAT-REFUSED": "19550312",
                  "PAT-MIXED-MOVE": "19550312", "PAT-MIXED-GET": "19550312"}
        priors, currents = {}, {}
        for patient, prior_birth in births.items():
            priors[patient] = write_exam(source, root / f"{patient}-prior", patient, "20250105", birth=prior_birth)
            if patient.startswith("PAT-MIXED"):  # the PACS holds two instances of another birth date in the series
                mix_in_another_birth_date(priors[patient].files[-MIXED:])
                orthanc.upload_many(priors[patient].files[:-MIXED])  # Orthanc's study answer: the first ones'
                orthanc.upload_many(priors[patient].files[-MIXED:])
            else:
                orthanc.upload_many(priors[patient].files)
            currents[patient] = write_exam(source, root / f"{patient}-current", patient, "20260110")
            store_current(node, currents[patient])
        # PAT-GET has two more earlier exams in Orthanc: an older one within the lookback, one before it
        older = {day: write_exam(source, root / f"PAT-GET-{day}", "PAT-GET", day) for day in ("20240105", "20220105")}
        for exam in older.values():
            orthanc.upload_many(exam.files)
        current = {patient: routed_id(node, exam) for patient, exam in currents.items()}
        yield Setup(node, orthanc, current, priors, older["20240105"], lung_port)
    finally:
        node.stop()
        orthanc.stop()


def service(node: Node, node_ae: str = NODE_AE, **priors: object) -> PriorService:
    settings = node.settings.model_copy(update={"priors": node.settings.priors.model_copy(update=priors),
                                                "node": node.settings.node.model_copy(update={"ae_title": node_ae})})
    return PriorService(node.db, node.spool, node.intake, settings)


def events_of(node: Node, series_uid: str, *codes: EventCode) -> list[Event]:
    with node.db.session() as s:
        return list(s.execute(select(Event).where(Event.series_instance_uid == series_uid,
                                                  Event.code.in_([int(c) for c in codes])).order_by(Event.id)).scalars())


def current_uid(node: Node, series_id: int) -> str:
    with node.db.session() as s:
        series = s.get(Series, series_id)
        assert series is not None
        return series.series_instance_uid


def assert_held_prior(setup: Setup, patient: str, series_id: int, method: str) -> None:
    """The prior's rows, files and events: a prior, complete and held, no job, no delivery."""
    node, exam = setup.node, setup.priors[patient]

    def held() -> bool:
        with node.db.session() as s:
            series = s.get(Series, series_id)
            return series is not None and series.status == SeriesState.IGNORED
    wait_for(held, 30, "the prior series to complete and be held")
    with node.db.session() as s:
        series = s.get(Series, series_id)
        assert series is not None and series.series_instance_uid == exam.series_uid
        assert series.role == SeriesRole.PRIOR
        # the routing facts the C-FIND gave (study, series and instance level)
        assert (series.modality, series.body_part, series.slice_thickness) == ("CT", "CHEST", 2.0)
        paths = list(s.execute(select(Instance.path).where(Instance.series_id == series_id)).scalars())
        assert s.execute(select(func.count(Job.id)).where(Job.series_id == series_id)).scalar_one() == 0
        assert s.execute(select(func.count(Delivery.id)).where(Delivery.series_id == series_id)).scalar_one() == 0
        row = s.execute(select(PriorRetrieval).where(PriorRetrieval.series_instance_uid == exam.series_uid)).scalar_one()
        assert (row.state, row.method, row.instances, row.current_series_id) == (
            PriorRetrievalState.RETRIEVED, method, len(exam.files), setup.current[patient])
    assert len(paths) == len(exam.files)
    for relative in paths:  # the files are in the spool, and they are the patient's
        assert dcmread(node.spool.path(relative), stop_before_pixels=True).PatientID == patient
    assert events_of(node, exam.series_uid, EventCode.PRIOR_SERIES_HELD)
    assert not events_of(node, exam.series_uid, EventCode.SERIES_ROUTED, EventCode.JOB_QUEUED)


@pytest.mark.parametrize("patient, method", [("PAT-MOVE", "c-move"), ("PAT-GET", "c-get")])
def test_prior_found_by_c_find_and_retrieved(setup: Setup, patient: str, method: str) -> None:
    node, current = setup.node, setup.current[patient]
    outcome = service(node, method=method).obtain(current)
    assert outcome.status == "retrieved", outcome.reason
    assert outcome.prior is not None and outcome.series_id is not None
    assert (outcome.prior.source, outcome.prior.study_uid, outcome.prior.series_uid, outcome.prior.study_date) == (
        setup.orthanc.aet, setup.priors[patient].study_uid, setup.priors[patient].series_uid, "20250105")
    # the most recent; PAT-GET's older exam listed, the one outside the 3-year lookback not
    assert outcome.others == ([f"study {setup.older.study_uid} of 20240105 (ORTHANC)"] if patient == "PAT-GET" else [])
    assert_held_prior(setup, patient, outcome.series_id, method)
    names = [e.name for e in events_of(node, current_uid(node, current), EventCode.PRIOR_SEARCH, EventCode.PRIOR_QUERY,
                                       EventCode.PRIOR_FOUND, EventCode.PRIOR_RETRIEVED, EventCode.PRIOR_RETRIEVE_FAILED)]
    assert names == ["PRIOR_SEARCH", "PRIOR_QUERY", "PRIOR_FOUND", "PRIOR_RETRIEVED"]
    with node.db.session() as s:  # ingest keeps the identity a later exam's prior check reads
        study = s.execute(select(Study).join(Series).where(Series.id == current)).scalar_one()
        assert (study.patient_birth_date, study.issuer_of_patient_id) == ("19550312", "")


def test_prior_of_another_birth_date_is_refused(setup: Setup) -> None:
    node, current = setup.node, setup.current["PAT-MISMATCH"]
    outcome = service(node).obtain(current)
    assert outcome.status == "not_available"
    assert "PatientBirthDate differs" in outcome.reason and outcome.summary().startswith("prior not available")
    warning = events_of(node, current_uid(node, current), EventCode.PRIOR_PATIENT_MISMATCH)
    assert len(warning) == 1 and warning[0].level == "warning"
    with node.db.session() as s:  # nothing was retrieved
        assert s.execute(select(func.count(Series.id)).where(
            Series.series_instance_uid == setup.priors["PAT-MISMATCH"].series_uid)).scalar_one() == 0


def test_c_move_refused_leaves_nothing_behind(setup: Setup) -> None:
    """Orthanc cannot reach STRANGER, the move destination: the C-MOVE fails."""
    node, current, exam = setup.node, setup.current["PAT-REFUSED"], setup.priors["PAT-REFUSED"]
    outcome = service(node, node_ae="STRANGER").obtain(current)
    assert outcome.status == "not_available"
    assert outcome.reason == "ORTHANC: C-MOVE refused with status 0xC000 (failed)"
    # the prior exists and was not retrieved: the exam's statement names it (Lung-RADS v2022 category 0)
    assert outcome.unretrieved is not None
    assert (outcome.unretrieved.study_uid, outcome.unretrieved.series_uid) == (exam.study_uid, exam.series_uid)
    with node.db.session() as s:
        row = s.execute(select(PriorRetrieval).where(PriorRetrieval.series_instance_uid == exam.series_uid)).scalar_one()
        assert (row.state, row.instances, row.reason) == (PriorRetrievalState.FAILED, 0, outcome.reason)
        # the series row made for the instances that never came is gone: no empty series waits forever
        assert s.execute(select(func.count(Series.id)).where(Series.series_instance_uid == exam.series_uid)).scalar_one() == 0
    failed = events_of(node, current_uid(node, current), EventCode.PRIOR_RETRIEVE_FAILED)
    assert len(failed) == 1 and "0xC000" in failed[0].message


@pytest.mark.parametrize("patient, method, stored", [("PAT-MIXED-MOVE", "c-move", 20), ("PAT-MIXED-GET", "c-get", 20 - MIXED)])
def test_retrieved_instances_of_another_patient_are_refused(setup: Setup, patient: str, method: str, stored: int) -> None:
    """The C-FIND answer matches, but the PACS sends instances of another birth date: no comparison.
    C-GET refuses them unstored (0xC000 to the PACS); after a C-MOVE the stored instances are checked."""
    node, current, exam = setup.node, setup.current[patient], setup.priors[patient]
    outcome = service(node, method=method).obtain(current)
    assert outcome.status == "not_available"
    assert outcome.reason.endswith("are not the patient's: PatientBirthDate differs")
    with node.db.session() as s:
        row = s.execute(select(PriorRetrieval).where(PriorRetrieval.series_instance_uid == exam.series_uid)).scalar_one()
        assert (row.state, row.instances, row.reason) == (PriorRetrievalState.REFUSED, stored, outcome.reason)
        series = s.execute(select(Series).where(Series.series_instance_uid == exam.series_uid)).scalar_one()
        assert series.role == SeriesRole.PRIOR  # what was stored stays, held: never routed, never delivered
        paths = list(s.execute(select(Instance.path).where(Instance.series_id == series.id)).scalars())
    births = sorted(str(dcmread(node.spool.path(p), stop_before_pixels=True).PatientBirthDate) for p in paths)
    assert births == sorted(["19550312"] * (20 - MIXED) + ["19610101"] * (stored - 20 + MIXED))
    [warning] = events_of(node, current_uid(node, current), EventCode.PRIOR_PATIENT_MISMATCH)
    assert warning.level == "warning" and warning.details is not None
    assert warning.details["mismatches"] == ["PatientBirthDate differs"]


def test_orthanc_stopped_gives_prior_not_available_with_the_reason(setup: Setup) -> None:
    node, current = setup.node, setup.current["PAT-REFUSED"]
    setup.orthanc.stop()
    try:
        outcome = service(node).obtain(current)
    finally:
        setup.orthanc.start()  # same ports and storage: the other tests need not run first
    assert outcome.status == "not_available"
    assert outcome.reason == (f"no association with ORTHANC@127.0.0.1:{setup.orthanc.dicom_port}: "
                              "peer unreachable or not answering")
    assert outcome.unretrieved is None  # whether a prior exists is not known
    failed = events_of(node, current_uid(node, current), EventCode.PRIOR_RETRIEVE_FAILED)
    assert failed[-1].message == f"prior not available: {outcome.reason}; the exam is analysed without comparison"
    with node.db.session() as s:  # nothing was asked for, so nothing waits
        assert s.execute(select(func.count(PriorRetrieval.id)).where(
            PriorRetrieval.current_series_id == current, PriorRetrieval.state == PriorRetrievalState.PENDING)).scalar_one() == 0


def silent_listener() -> tuple[socket.socket, threading.Event]:
    """A TCP port that accepts connections and never says a word (a hung PACS)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()
    threading.Thread(target=accept, daemon=True).start()
    return server, stop


def test_pacs_down_or_hung_gives_prior_not_available(setup: Setup) -> None:
    node, current = setup.node, setup.current["PAT-MOVE"]
    uid = current_uid(node, current)
    # nothing listens: the peer is down
    down = PriorPeer(ae_title="DOWN", host="127.0.0.1", port=free_port())
    outcome = service(node, peers=[down], query_timeout_s=5).obtain(setup.current["PAT-MISMATCH"])
    assert outcome.status == "not_available" and "DOWN" in outcome.reason and "unreachable" in outcome.reason
    # accepts, never answers: bounded by query_timeout_s
    server, stop = silent_listener()
    try:
        hung = PriorPeer(ae_title="HUNG", host="127.0.0.1", port=server.getsockname()[1])
        before = len(events_of(node, uid, EventCode.PRIOR_RETRIEVE_FAILED))
        outcome = service(node, peers=[hung], query_timeout_s=1).obtain(current)
    finally:
        stop.set()
        server.close()
    # the own database has no analysed prior of this patient: the peer was asked, and failed
    assert outcome.status == "not_available" and "HUNG" in outcome.reason
    failed = events_of(node, uid, EventCode.PRIOR_RETRIEVE_FAILED)
    assert len(failed) == before + 1 and "prior not available" in failed[-1].message and failed[-1].level == "warning"
    assert failed[-1].details is not None and "HUNG" in str(failed[-1].details["reason"])


# -- the comparison in the node's job, end to end (the lung-nodule pipeline; Orthanc is the PACS) -----
FOLLOW_UP_PATIENTS = {"c-move": "PAT-FU-MOVE", "c-get": "PAT-FU-GET"}
DOWN_PATIENT = "PAT-FU-DOWN"


@dataclass
class Compared:
    """One current exam's job at the lung node, its finding rows and the SR that came back into Orthanc."""

    job: Job
    rows: list[FindingRow]
    sr: Dataset
    prior_series_uid: str


@dataclass
class FollowUps:
    runs: dict[str, Compared]  # by retrieval method
    down: Compared  # Orthanc stopped for the query
    prior_jobs: dict[str, tuple[Job, list[FindingRow]]]  # by method: the retrieved prior's own analysis
    truth: dict[str, Any]
    settings: Settings
    down_reason: str
    down_events: list[Event]


def as_patient(files: list[Path], out: Path, patient_id: str) -> Exam:
    """A phantom series as another patient's (same dates, name, birth date, geometry; its own UIDs)."""
    out.mkdir(parents=True)
    study_uid, series_uid = (generate_uid(entropy_srcs=[str(out), part]) for part in ("study", "series"))
    written = []
    for path in files:
        ds = dcmread(path)
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(out), path.name])
        ds.save_as(out / path.name, enforce_file_format=True)
        written.append(out / path.name)
    return Exam(written, study_uid, series_uid)


def lung_settings(root: Path, setup: Setup, method: str) -> Settings:
    (root / f"lung-{method}.toml").write_text(f"""
[series]
stable_seconds = 0.5
poll_seconds = 0.2
[jobs]
poll_seconds = 0.2
[web]
enabled = false
[sender]
backoff_initial_s = 1
backoff_max_s = 2
poll_seconds = 0.2
[[routes]]
name = "chest-ct"
pipeline = "lung-nodule"
destinations = ["PACS"]
[routes.match]
modality = ["CT"]
min_slices = 16
[destinations.PACS]
ae_title = "{setup.orthanc.aet}"
host = "127.0.0.1"
port = {setup.orthanc.dicom_port}
[priors]
enabled = true
method = "{method}"
query_timeout_s = 20
retrieve_timeout_s = 60
max_wait_s = 90
[[priors.peers]]
ae_title = "{setup.orthanc.aet}"
host = "127.0.0.1"
port = {setup.orthanc.dicom_port}
""")
    return load_settings(root / f"lung-{method}.toml", {"node.data_dir": root / "lung-data", "node.port": setup.lung_port,
                                                        "node.host": "127.0.0.1", "node.ae_title": LUNG_AE,
                                                        "node.min_free_disk_mb": 1})


def done_job(node: Node, series_uid: str) -> tuple[Job, list[FindingRow]]:
    def done() -> Job | None:
        with node.db.session() as s:
            job = s.execute(select(Job).join(Series).where(Series.series_instance_uid == series_uid)).scalar()
            if job is not None and job.state == JobState.FAILED:
                raise AssertionError(job.error)
            return job if job is not None and job.state == JobState.DONE else None
    job = wait_for(done, 300, f"the job of series {series_uid}")
    with node.db.session() as s:
        rows = list(s.execute(select(FindingRow).where(FindingRow.job_id == job.id).order_by(FindingRow.index)).scalars())
    return job, rows


def sr_in_orthanc(orthanc: OrthancProcess, study_uid: str) -> Dataset:
    """The SR the node sent back into the current study."""
    def arrived() -> Dataset | None:
        study = orthanc.lookup_study(study_uid)
        for series in orthanc.series(study) if study else []:
            if orthanc.series_tags(series).get("Modality") == "SR":
                return dcmread(BytesIO(orthanc.instance_file(orthanc.instances(series)[0])))
        return None
    return wait_for(arrived, 60, f"the SR of study {study_uid} in Orthanc")


def compare_run(node: Node, orthanc: OrthancProcess, prior: Exam, current: Exam) -> tuple[Compared, tuple[Job, list[FindingRow]]]:
    """Orthanc sends the current study to the lung node; the result comes back with the comparison."""
    orthanc.wait_job(orthanc.store_to_modality(LUNG_AE, [str(orthanc.lookup_study(current.study_uid))])["ID"])
    job, rows = done_job(node, current.series_uid)
    return Compared(job, rows, sr_in_orthanc(orthanc, current.study_uid), prior.series_uid), done_job(node, prior.series_uid)


@pytest.fixture(scope="module")
def followups(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FollowUps]:
    from inference.phantom import write_phantom_series
    from inference.phantom.follow_up import write_follow_up_series

    root = tmp_path_factory.mktemp("followups")
    prior_case = write_phantom_series(root / "prior", 5, small=True)
    current_case = write_follow_up_series(root / "current", 105, 5, 12, small=True)
    exams: dict[str, tuple[Exam, Exam]] = {}
    for patient in (*FOLLOW_UP_PATIENTS.values(), DOWN_PATIENT):
        exams[patient] = (as_patient(prior_case.files, root / f"{patient}-prior", patient),
                          as_patient(current_case.files, root / f"{patient}-current", patient))
        setup.orthanc.upload_many(exams[patient][0].files)  # the priors are in the PACS
        if patient != DOWN_PATIENT:
            setup.orthanc.upload_many(exams[patient][1].files)
    runs, prior_jobs = {}, {}
    node = Node(lung_settings(root, setup, "c-move"))
    node.start()
    try:
        runs["c-move"], prior_jobs["c-move"] = compare_run(node, setup.orthanc, *exams[FOLLOW_UP_PATIENTS["c-move"]])
        setup.orthanc.stop()  # down for the query: the current exam comes from a scanner
        try:
            store_current(node, exams[DOWN_PATIENT][1])
            down_job, down_rows = done_job(node, exams[DOWN_PATIENT][1].series_uid)
            down_events = events_of(node, exams[DOWN_PATIENT][1].series_uid, EventCode.PRIOR_RETRIEVE_FAILED,
                                    EventCode.PRIOR_NOT_COMPARED)
        finally:
            setup.orthanc.start()
        down = Compared(down_job, down_rows, sr_in_orthanc(setup.orthanc, exams[DOWN_PATIENT][1].study_uid),
                        exams[DOWN_PATIENT][0].series_uid)
    finally:
        node.stop()
    settings = lung_settings(root, setup, "c-get")
    node = Node(settings)  # the same data, restarted to retrieve by C-GET
    node.start()
    try:
        runs["c-get"], prior_jobs["c-get"] = compare_run(node, setup.orthanc, *exams[FOLLOW_UP_PATIENTS["c-get"]])
    finally:
        node.stop()
    reason = f"no association with ORTHANC@127.0.0.1:{setup.orthanc.dicom_port}: peer unreachable or not answering"
    yield FollowUps(runs, down, prior_jobs, json.loads(current_case.truth_path.read_text()), settings,
                    f"prior not available: {reason}", down_events)


@pytest.mark.parametrize("method", ["c-move", "c-get"])
def test_sr_back_in_orthanc_carries_the_comparison_with_the_retrieved_prior(followups: FollowUps, method: str) -> None:
    from dicomnode.results.sr_follow_up import derived_tracking_uid

    run, truth = followups.runs[method], followups.truth
    prior_job, prior_rows = followups.prior_jobs[method]
    # the retrieved prior was analysed once, as its own job, never delivered; its nodules keep the UIDs
    # its own SR gives them (derived from its series, the model and the result settings)
    assert (prior_job.route_name, prior_job.destinations, prior_job.summary["deliveries"]) == ("prior", [], 0)
    version = prior_job.summary["model"]["version"]
    assert [r.tracking_uid for r in prior_rows] == [
        derived_tracking_uid(i, run.prior_series_uid, version, followups.settings.results) for i in range(len(prior_rows))]
    comparison = run.job.summary["comparison"]
    assert comparison["performed"] is True and comparison["interval_days"] == truth["interval_days"] == 365
    assert comparison["prior_series_instance_uid"] == run.prior_series_uid and comparison["prior_job_id"] == prior_job.id
    groups = nodule_groups(run.sr)
    prior_uids = {r.id: r.tracking_uid for r in prior_rows}
    checked = 0
    for n in truth["nodules"]:
        if n["status"] == "resolved":
            continue
        row, dist = nearest(run.rows, n["center_mm"])
        group = groups[str(row.tracking_uid)]
        assert dist < 5 and group["Change since prior exam"] == STATUS_MEANING[str(row.comparison_status)], (n, group)
        assert group["Lung-RADS assessment category"].startswith(f"Lung-RADS {row.lung_rads}")
        if n["status"] == "new":
            assert row.comparison_status == "new" and row.lung_rads == "4A" and row.tracking_uid not in prior_uids.values()
            continue
        if n["prior_diameter_mm"] < 6:
            continue  # the demo detector may miss a < 6 mm prior
        checked += 1
        assert row.comparison_status == n["status"]
        assert row.tracking_uid == prior_uids[row.prior_finding_id]  # the nodule keeps its identity
        if n["status"] == "growing":
            print(f"\n{method}: VDT {group['Volume doubling time']} days, truth {n['doubling_time_days']}")
            assert group["Volume doubling time"] == pytest.approx(n["doubling_time_days"], rel=0.15), (n, group)
        else:
            assert group["Volume doubling time"] == "not growing" and row.lung_rads == "2"
    assert checked >= 3
    # resolved: the truth's listed at its prior position; any other only a < 6 mm prior the detector missed now
    for entry in comparison["resolved"]:
        truly = any(n["status"] == "resolved" and math.dist(entry["center_mm"], n["prior_center_mm"]) < 5
                    for n in truth["nodules"])
        assert truly or entry["mean_diameter_mm"] < 6, entry
    assert sum(n["status"] == "resolved" for n in truth["nodules"]) >= 1
    assert all(any(math.dist(e["center_mm"], n["prior_center_mm"]) < 5 for e in comparison["resolved"])
               for n in truth["nodules"] if n["status"] == "resolved")
    assert len(report_texts(run.sr, "Prior exam nodule not seen (resolved)")) == len(comparison["resolved"])
    print(f"{method}: timings {run.job.summary['timings_s']}")
    assert report_texts(run.sr, "Prior study instance UID") == [comparison["prior_study_instance_uid"]]
    lung_rads = [i.ConceptCodeSequence[0].CodeValue for i in items(run.sr)
                 if i.ValueType == "CODE" and meaning(i) == "Lung-RADS assessment category"]
    assert lung_rads[-1] == comparison["lung_rads"] == "4B"  # the exam's follow-up category, at report level


def test_orthanc_stopped_for_the_query_result_delivered_without_comparison(setup: Setup, followups: FollowUps) -> None:
    down = followups.down
    assert down.job.summary["comparison"]["performed"] is False
    assert "prior_not_compared" not in down.job.summary["comparison"]  # no prior known to exist: a baseline
    assert "earlier chest CT" not in (down.job.summary["exam"]["reason"] or "")
    assert down.job.summary["comparison"]["reason"] == followups.down_reason
    assert report_texts(down.sr, "Comparison with prior exam") == [followups.down_reason]
    assert down.rows and all(r.comparison_status is None and r.tracking_uid for r in down.rows)
    # audited: the failed query (warning) and the result that went without comparison, with the reason
    failed = [e for e in followups.down_events if e.code == int(EventCode.PRIOR_RETRIEVE_FAILED)]
    assert len(failed) == 1 and failed[0].level == "warning" and followups.down_reason in failed[0].message
    [skipped] = [e for e in followups.down_events if e.code == int(EventCode.PRIOR_NOT_COMPARED)]
    assert skipped.job_id == down.job.id and skipped.message == f"result without comparison: {followups.down_reason}"
