"""Priors without a network (issue 12, part 2): the patient-safety rules, the [priors] settings, the
prior found in the node's own audit database (its findings cached), the one analysis of a prior, and
routing holding a prior series. The C-FIND/C-MOVE/C-GET paths are in tests/e2e/test_priors_orthanc.py."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from dicomnode.config import ConfigError, PriorPeer, Route, RouteMatch, Settings, load_settings
from dicomnode.priors.safety import PatientIdentity, mismatches, normalise_name
from dicomnode.priors.service import PriorService, analyse_prior
from dicomnode.process.jobs import queue_job
from dicomnode.process.routing import Router
from dicomnode.receive.ingest import Ingestor
from dicomnode.receive.intake import Intake
from dicomnode.receive.lifecycle import SeriesLifecycle
from dicomnode.receive.spool import Spool
from storage.db import Database, sqlite_url
from storage.events import EventCode
from storage.models import Event, FindingRow, Job, Series, Study
from storage.states import JobState, SeriesRole, SeriesState

JANE = PatientIdentity("P1", "HOSP-A", "Doe^Jane", "19550312")


# -- patient safety ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [("Doe^Jane", "DOE^JANE"), ("Doe^Jane^^", "doe^jane"), (" Doe ^ Jane ", "DOE^JANE"),
                                  ("Doe^Jane^^^=ドウ^ジェーン", "DOE^JANE")])
def test_names_are_compared_normalised(a: str, b: str) -> None:
    assert normalise_name(a) == normalise_name(b)


@pytest.mark.parametrize("prior, why", [
    (JANE, []),
    (PatientIdentity("P1", "HOSP-A", "DOE^JANE^^", "19550312"), []),  # the same name, written otherwise
    (PatientIdentity("P1", "HOSP-A", "", ""), []),  # name and birth date not carried by the prior: not compared
    (PatientIdentity("P2", "HOSP-A", "Doe^Jane", "19550312"), ["PatientID differs"]),
    (PatientIdentity("P1", "HOSP-B", "Doe^Jane", "19550312"), ["IssuerOfPatientID differs"]),
    (PatientIdentity("P1", "", "Doe^Jane", "19550312"), ["IssuerOfPatientID present on one exam only"]),
    (PatientIdentity("P1", "HOSP-A", "Doe^John", "19550312"), ["PatientName differs"]),
    (PatientIdentity("P1", "HOSP-A", "Doe^Jane", "19600101"), ["PatientBirthDate differs"]),
    (PatientIdentity("", "HOSP-A", "Doe^Jane", "19550312"), ["PatientID missing: the exams cannot be matched to one patient"]),
    (PatientIdentity("P2", "HOSP-B", "Roe^Richard", "19600101"),
     ["PatientID differs", "IssuerOfPatientID differs", "PatientName differs", "PatientBirthDate differs"]),
])
def test_a_prior_is_the_patient_only_when_every_carried_attribute_agrees(prior: PatientIdentity, why: list[str]) -> None:
    assert mismatches(JANE, prior) == why


def test_an_issuer_on_the_prior_only_is_a_mismatch_too() -> None:
    assert mismatches(PatientIdentity("P1"), PatientIdentity("P1", "HOSP-A")) == ["IssuerOfPatientID present on one exam only"]


# -- settings -------------------------------------------------------------------------------------
def _load(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "node.toml").write_text(text)
    return load_settings(tmp_path / "node.toml")


@pytest.mark.parametrize("text, error", [
    ('[priors]\nretrieve_from = "OTHER"\n[[priors.peers]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n',
     "priors.retrieve_from 'OTHER' is not the ae_title of one of priors.peers (known: PACS)"),
    ('[[priors.peers]]\nae_title = "BAD\\\\AE"\nhost = "127.0.0.1"\nport = 104\n', "is not a valid AE title"),
    ('[[priors.peers]]\nae_title = "PACS"\nhost = "pacs..example"\nport = 104\n', "is not an IP address or a host name"),
    ('[[priors.peers]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 0\n', "priors.peers[0].port: Input should be greater than or equal to 1"),
    ('[priors]\nmethod = "c-send"\n', "priors.method"),
    ('[priors]\nmax_wait_s = 0\n', "priors.max_wait_s"),
    ('[[priors.peers]]\nae_title = "PACS"\nhost = "10.0.0.1"\nport = 104\n[[priors.peers]]\nae_title = "PACS"\n'
     'host = "10.0.0.2"\nport = 104\n', "each peer needs its own ae_title"),
])
def test_bad_priors_settings_are_refused_naming_the_key(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match="priors") as caught:
        _load(tmp_path, text)
    assert error in str(caught.value)


def test_priors_are_off_by_default_and_a_peer_list_loads(tmp_path: Path) -> None:
    assert Settings().priors.enabled is False
    settings = _load(tmp_path, '[priors]\nenabled = true\nmethod = "c-get"\nretrieve_from = "PACS"\n'
                               '[[priors.peers]]\nae_title = " PACS "\nhost = "127.0.0.1"\nport = 4242\ntls = true\n')
    assert settings.priors.peers == [PriorPeer(ae_title="PACS", host="127.0.0.1", port=4242, tls=True)]
    assert (settings.priors.method, settings.priors.retrieve_from) == ("c-get", "PACS")


# -- the node's own database ------------------------------------------------------------------------
class Store:
    """A migrated audit database with a spool and an intake, as the node has them."""

    def __init__(self, root: Path, **priors: Any) -> None:
        self.db = Database(sqlite_url(root / "audit.sqlite"))
        self.db.migrate()
        self.spool = Spool(root / "spool", 0)
        lifecycle = SeriesLifecycle(self.db)
        self.intake = Intake(Ingestor(self.db, self.spool, lifecycle), lifecycle)
        self.settings = Settings(priors={"enabled": True, **priors})
        self._n = 0

    def exam(self, study_date: str, identity: PatientIdentity = JANE, analysed: bool = True,
             verdict: str = "analysed", findings: int = 1) -> tuple[int, int | None]:
        """A study with one CT series (and, `analysed`, a done job with `findings` finding rows)."""
        self._n += 1
        with self.db.session() as s:
            study = Study(study_instance_uid=f"1.2.3.{self._n}", patient_id=identity.patient_id,
                          patient_name=identity.name, study_date=study_date,
                          issuer_of_patient_id=identity.issuer or None, patient_birth_date=identity.birth_date or None)
            series = Series(series_instance_uid=f"1.2.3.{self._n}.1", study=study, modality="CT",
                            status=SeriesState.ROUTED, route_name="chest-ct", instance_count=100)
            s.add_all([study, series])
            s.flush()
            if not analysed:
                return series.id, None
            job = Job(series_id=series.id, pipeline="lung-nodule", state=JobState.DONE, verdict=verdict)
            s.add(job)
            s.flush()
            for i in range(findings):
                s.add(FindingRow(job_id=job.id, series_id=series.id, index=i + 1, center_x_mm=10.0, center_y_mm=20.0,
                                 center_z_mm=30.0, diameter_mm=6.0, volume_mm3=113.0, probability=0.9, model_score=0.2,
                                 lung_rads="3", sop_instance_uid="1.2.9", row=10.0, column=10.0))
            return series.id, job.id

    def service(self) -> PriorService:
        return PriorService(self.db, self.spool, self.intake, self.settings)

    def events(self, *codes: EventCode) -> list[Event]:
        with self.db.session() as s:
            return list(s.execute(select(Event).where(Event.code.in_([int(c) for c in codes])).order_by(Event.id)).scalars())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    # a peer where nothing listens: a search that asked it would fail, and say so
    return Store(tmp_path, peers=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 9}], lookback_years=3)


def test_the_most_recent_analysed_prior_in_the_own_database_is_found_without_any_network(store: Store) -> None:
    older_id, older_job = store.exam("20230601")
    prior_id, prior_job = store.exam("20250105", findings=2)
    store.exam("20250301", analysed=False)  # received but never analysed: no cached findings
    store.exam("20250401", verdict="not_analysed")  # the pipeline could not analyse it
    store.exam("20250501", PatientIdentity("P2", "HOSP-A", "Roe^Richard", "19600101"))  # another patient
    store.exam("20250601", PatientIdentity("P1", "HOSP-B", "Doe^Jane", "19550312"))  # P1 of another issuer
    store.exam("20220101")  # outside the 3-year lookback
    store.exam("20260301")  # after the current exam
    current_id, _ = store.exam("20260110", analysed=False)
    outcome = store.service().obtain(current_id)
    assert (outcome.status, outcome.series_id, outcome.job_id) == ("found", prior_id, prior_job)
    assert outcome.prior is not None and outcome.prior.study_date == "20250105"
    assert outcome.others == ["study 1.2.3.1 of 20230601 (database)"]
    with store.db.session() as s:  # the cached findings the comparison reads
        assert s.execute(select(func.count(FindingRow.id)).where(FindingRow.job_id == outcome.job_id)).scalar_one() == 2
    names = [e.name for e in store.events(EventCode.PRIOR_SEARCH, EventCode.PRIOR_FOUND, EventCode.PRIOR_RETRIEVE_FAILED)]
    assert names == ["PRIOR_SEARCH", "PRIOR_FOUND"]  # the peer was never asked


def test_an_own_database_prior_of_another_birth_date_is_refused_and_audited(store: Store) -> None:
    store.exam("20250105", PatientIdentity("P1", "HOSP-A", "Doe^Jane", "19600101"))
    current_id, _ = store.exam("20260110", analysed=False)
    outcome = store.service().obtain(current_id)
    assert outcome.status == "not_available" and outcome.job_id is None
    assert outcome.summary() == ("prior not available: patient mismatch with study 1.2.3.1 of 20250105 (database): "
                                 "PatientBirthDate differs")
    [warning] = store.events(EventCode.PRIOR_PATIENT_MISMATCH)
    assert warning.level == "warning" and warning.details == {"prior_study_instance_uid": "1.2.3.1",
                                                              "mismatches": ["PatientBirthDate differs"]}


def test_no_prior_anywhere_is_not_found_and_disabled_priors_search_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)  # no peers
    current_id, _ = store.exam("20260110", analysed=False)
    outcome = store.service().obtain(current_id)
    assert outcome.status == "not_found"
    assert outcome.summary() == "prior not available: no earlier chest CT of the patient found"
    assert [e.name for e in store.events(EventCode.PRIOR_SEARCH, EventCode.PRIOR_NOT_FOUND)] == ["PRIOR_SEARCH", "PRIOR_NOT_FOUND"]
    unknown = store.service().obtain(424242)
    assert (unknown.status, unknown.reason) == ("not_available", "series 424242 is not known")
    store.settings = Settings(priors={"enabled": False})
    assert store.service().obtain(current_id).status == "disabled"
    assert len(store.events(EventCode.PRIOR_SEARCH)) == 1


def test_a_prior_is_analysed_once_and_only_a_prior(store: Store) -> None:
    exam_id, _ = store.exam("20250105", analysed=False)
    with pytest.raises(ValueError, match="is not a prior series"):
        analyse_prior(store.db, exam_id)
    with store.db.session() as s:
        series = s.get(Series, exam_id)
        assert series is not None
        series.role = SeriesRole.PRIOR
    job_id = analyse_prior(store.db, exam_id)
    assert analyse_prior(store.db, exam_id) == job_id  # queued: not queued again
    with store.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.destinations, job.route_name, job.state) == ([], "prior", JobState.QUEUED)
        job.state = JobState.FAILED  # a failed analysis may be tried again
    assert analyse_prior(store.db, exam_id) != job_id


def test_routing_holds_a_complete_prior_series(store: Store) -> None:
    """A prior matching a route with destinations starts no job and no delivery; an exam beside it does."""
    route = Route(name="chest-ct", pipeline="lung-nodule", destinations=["sender"], match=RouteMatch(modality=["CT"]))
    router = Router(store.db, [route], lambda s, series, r: queue_job(s, series, r.pipeline, r.name, list(r.destinations)))
    ids = []
    for role in (SeriesRole.PRIOR, None):
        series_id, _ = store.exam("20250105", analysed=False)
        with store.db.session() as s:
            series = s.get(Series, series_id)
            assert series is not None
            series.status, series.role = SeriesState.COMPLETE, role
        router.on_series_complete(series_id)
        ids.append(series_id)
    with store.db.session() as s:
        prior, exam = (s.get(Series, i) for i in ids)
        assert prior is not None and exam is not None
        assert (prior.status, exam.status) == (SeriesState.IGNORED, SeriesState.ROUTED)
        assert prior.status_reason is not None and "prior" in prior.status_reason
        assert [j for (j,) in s.execute(select(Job.series_id))] == [exam.id]
    assert [e.series_instance_uid for e in store.events(EventCode.PRIOR_SERIES_HELD)] == [prior.series_instance_uid]


def test_a_peer_that_is_down_gives_prior_not_available_and_an_audited_query(store: Store) -> None:
    """Nothing in the own database: the peer is asked, cannot be reached; the C-FIND attempt goes to
    the ATNA repository as a Query message (PS3.15 A.5.3.10), failed."""
    from dicomnode.atna.exporter import Mapper
    from tests.node.test_atna_messages import SRC, assert_audit_message

    current_id, _ = store.exam("20260110", analysed=False)
    outcome = store.service().obtain(current_id)
    assert outcome.status == "not_available"
    assert outcome.summary() == ("prior not available: no association with PACS@127.0.0.1:9: "
                                 "peer unreachable or not answering")
    [query] = store.events(EventCode.PRIOR_QUERY)
    [failed] = store.events(EventCode.PRIOR_RETRIEVE_FAILED)
    assert query.details is not None and (query.details["peer"], query.details["ok"]) == ("PACS", False)
    assert failed.level == "warning" and failed.details == {"reason": outcome.reason, "retrieval_id": None}
    with store.db.session() as s:
        [message] = Mapper(SRC).messages(s, query)
    root = assert_audit_message(message.xml)
    assert not message.ok and root.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    identifier = base64.b64decode(root.find("ParticipantObjectIdentification").findtext("ParticipantObjectQuery"))
    assert b"STUDY" in identifier and b"P1" in identifier and b"CT" in identifier


def test_a_prior_found_and_not_retrieved_reaches_the_comparison_by_its_label() -> None:
    """The provider passes on which earlier chest CT of the patient exists and was not retrieved (the exam's
    statement names it, tests/process/test_prior_followup.py); a prior not found, or not the patient's, is not named."""
    from dicomnode.priors.finder import PriorCandidate
    from dicomnode.priors.provider import NodePriors
    from dicomnode.priors.service import PriorOutcome

    candidate = PriorCandidate("ORTHANC", "1.2.3.4", "20250105", JANE, "1.2.3.4.5")
    outcomes = {"refused": PriorOutcome("not_available", "ORTHANC: C-MOVE refused with status 0xC000 (failed)",
                                        unretrieved=candidate),
                "none": PriorOutcome("not_found"),
                "mismatch": PriorOutcome("not_available", "patient mismatch with study 1.2.3.4 of 20250105 (ORTHANC): "
                                                          "PatientBirthDate differs")}

    class Service:
        def __init__(self, outcome: PriorOutcome) -> None:
            self.outcome = outcome

        def obtain(self, series_id: int) -> PriorOutcome:
            return self.outcome

    exams = {}
    for name, outcome in outcomes.items():
        provider = NodePriors.__new__(NodePriors)  # no database: the service is all it asks
        provider.service = Service(outcome)  # type: ignore[assignment]
        exams[name] = provider(1, lambda _datasets: None)  # type: ignore[arg-type, return-value]
    assert exams["refused"].not_compared == "study 1.2.3.4 of 20250105 (ORTHANC)"
    assert exams["refused"].summary == "prior not available: ORTHANC: C-MOVE refused with status 0xC000 (failed)"
    assert exams["none"].not_compared is None and exams["mismatch"].not_compared is None
    assert not any(exam.available for exam in exams.values())


@pytest.mark.filterwarnings("ignore:Invalid value for VR", "ignore:The value length")  # pydicom on the hostile values
def test_c_find_answers_with_invalid_uids_or_dates_are_left_out(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A C-FIND answer is the peer's word: a StudyInstanceUID or SeriesInstanceUID outside the UID grammar (a path, an
    overlong text) or a StudyDate that is no date never becomes the prior, so it reaches no C-MOVE, database row or
    report; the valid answer beside it is used, and each left-out answer is logged with the peer and the reason."""
    from pydicom.dataset import Dataset

    from dicomnode.priors import finder

    def answer(**values: str) -> Dataset:
        ds = Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return ds

    hostile_study, good_study = "1.2.3/../../etc", "1.2.840.99.1"
    studies = [answer(StudyInstanceUID=hostile_study, StudyDate="20250601", PatientID="P1"),
               answer(StudyInstanceUID="1.2.840.99.2", StudyDate="2025-06-0", PatientID="P1"),
               answer(StudyInstanceUID=good_study, StudyDate="20250105", PatientID="P1")]
    series = [answer(SeriesInstanceUID="9" * 65, Modality="CT", SliceThickness="1.25", ImageType="ORIGINAL\\PRIMARY"),
              answer(SeriesInstanceUID="1.2.840.99.1.1", Modality="CT", SliceThickness="1.25",
                     ImageType="ORIGINAL\\PRIMARY\\AXIAL", NumberOfSeriesRelatedInstances="120")]
    asked: list[str] = []

    class Peer:
        def __init__(self, peer: PriorPeer, *_args: Any) -> None:
            self.peer = peer

        def find(self, query: Dataset) -> list[Dataset]:
            asked.append(f"{query.QueryRetrieveLevel} {query.get('StudyInstanceUID', '')}")
            return studies if query.QueryRetrieveLevel == "STUDY" else series

        def close(self) -> None:
            pass

    monkeypatch.setattr(finder, "PeerQuery", Peer)
    route = Route(name="chest-ct", pipeline="lung-nodule", destinations=["sender"], match=RouteMatch(modality=["CT"]))
    with caplog.at_level("WARNING", logger="dicomnode.priors.finder"):
        search = finder.find_on_peer(PriorPeer(ae_title="PACS", host="127.0.0.1", port=104), "NODE", JANE,
                                     "1.2.840.99.9", ("20210110", "20260110"), route, 5.0, None)
    assert search.chosen is not None
    assert (search.chosen.study_uid, search.chosen.series_uid) == (good_study, "1.2.840.99.1.1")
    assert search.others == [] and asked == ["STUDY ", f"SERIES {good_study}"]  # nothing asked of the hostile study
    warnings = [r.getMessage() for r in caplog.records]
    assert any("PACS answered with an invalid StudyInstanceUID '1.2.3/../../etc'" in w for w in warnings), warnings
    assert any("invalid SeriesInstanceUID" in w and "65 characters" in w for w in warnings), warnings
