"""The comparison inside the node's job (issue 12), priors from the node's own database: a phantom exam
is analysed (no prior: "prior not available" in its SR and summary, audited), then its 12-month
follow-up arrives and is compared with it: the SR in the outbox carries per nodule the prior's values,
the change, the doubling time (within 15 % of the phantom's truth for nodules >= 6 mm), new and resolved,
the follow-up Lung-RADS, the prior's Tracking UIDs and a reference to the prior study and its SR; the
findings rows and job.summary["comparison"] say the same."""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.config import load_settings
from dicomnode.node import Node
from dicomnode.receive.intake import Origin
from inference.phantom import write_phantom_series
from inference.phantom.follow_up import write_follow_up_series
from storage.events import EventCode
from storage.models import Delivery, Event, FindingRow, Job, Series
from storage.states import JobState
from tests.node.helpers import free_port, wait_for
from tests.process.prior_helpers import STATUS_MEANING, nearest, nodule_groups, report_texts

pytestmark = pytest.mark.one_receiver  # receiving is not this file's subject (tests/conftest.py)

PRIOR_SEED, CURRENT_SEED = 5, 105
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class Analysed:
    job: Job
    rows: list[FindingRow]
    sr: Dataset


@dataclass
class Pair:
    node: Node
    prior: Analysed
    current: Analysed
    truth: dict[str, Any]


def settings_text(dead_port: int) -> str:
    return f"""
[series]
stable_seconds = 0.5
poll_seconds = 0.2
[jobs]
poll_seconds = 0.2
[web]
enabled = false
[sender]
backoff_initial_s = 600
[[routes]]
name = "chest-ct"
pipeline = "lung-nodule"
destinations = ["PACS"]
[routes.match]
modality = ["CT"]
min_slices = 16
[destinations.PACS]
ae_title = "NOBODY"
host = "127.0.0.1"
port = {dead_port}
[priors]
enabled = true
max_wait_s = 30
"""


def receive(node: Node, files: list[Path]) -> None:
    with node.intake.open(Origin(None, "SCANNER", "127.0.0.1")) as session:
        for path in files:
            assert session.store(path.read_bytes()).status == 0x0000


def analysed(node: Node, series_uid: str) -> Analysed:
    """The series' done job, its finding rows and the SR it put in the outbox."""
    def done() -> Job | None:
        with node.db.session() as s:
            job = s.execute(select(Job).join(Series).where(Series.series_instance_uid == series_uid)).scalar()
            if job is not None and job.state == JobState.FAILED:
                raise AssertionError(job.error)
            return job if job is not None and job.state == JobState.DONE else None
    job = wait_for(done, 240, f"the job of {series_uid}")
    with node.db.session() as s:
        rows = list(s.execute(select(FindingRow).where(FindingRow.job_id == job.id).order_by(FindingRow.index)).scalars())
        path = s.execute(select(Delivery.path).where(Delivery.job_id == job.id,
                                                     Delivery.sop_class_uid.startswith(SR_PREFIX))).scalar_one()
    return Analysed(job, rows, dcmread(node.settings.outbox_dir / path))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("prior-followup")
    prior = write_phantom_series(root / "prior", PRIOR_SEED, small=True)
    current = write_follow_up_series(root / "current", CURRENT_SEED, PRIOR_SEED, 12, small=True)
    (root / "node.toml").write_text(settings_text(free_port()))
    settings = load_settings(root / "node.toml", {"node.data_dir": root / "data", "node.port": free_port(),
                                                  "node.host": "127.0.0.1", "node.min_free_disk_mb": 1})
    node = Node(settings)
    node.start()
    try:
        receive(node, prior.files)
        first = analysed(node, prior.series_instance_uid)
        receive(node, current.files)
        yield Pair(node, first, analysed(node, current.series_instance_uid), json.loads(current.truth_path.read_text()))
    finally:
        node.stop()


def test_first_exam_has_no_prior_and_says_so(pair: Pair) -> None:
    job = pair.prior.job
    assert job.summary is not None
    assert job.summary["comparison"] == {"performed": False, "prior_job_id": None, "prior_sr_sop_instance_uid": None,
                                         "other_priors": [],
                                         "reason": "prior not available: no earlier chest CT of the patient found"}
    assert report_texts(pair.prior.sr, "Comparison with prior exam") == [job.summary["comparison"]["reason"]]
    # every nodule keeps the Tracking UID its SR gave it: a later exam follows it
    groups = nodule_groups(pair.prior.sr)
    assert sorted(r.tracking_uid for r in pair.prior.rows) == sorted(groups)
    assert all(r.comparison_status is None for r in pair.prior.rows)
    with pair.node.db.session() as s:
        [event] = s.execute(select(Event).where(Event.job_id == job.id,
                                                Event.code == int(EventCode.PRIOR_NOT_COMPARED))).scalars()
    assert "prior not available" in event.message


def test_follow_up_is_compared_in_the_job_rows_summary_and_sr(pair: Pair) -> None:
    job, rows, sr = pair.current.job, pair.current.rows, pair.current.sr
    assert job.summary is not None
    comparison = job.summary["comparison"]
    assert comparison["performed"] is True and comparison["interval_days"] == pair.truth["interval_days"] == 365
    assert comparison["prior_job_id"] == pair.prior.job.id
    assert comparison["prior_sr_sop_instance_uid"] == pair.prior.sr.SOPInstanceUID
    # the follow-up category replaces the baseline one in the exam summary
    assert comparison["lung_rads"] == job.summary["exam"]["lung_rads"] == "4B"
    groups = nodule_groups(sr)
    prior_uids = {r.id: r.tracking_uid for r in pair.prior.rows}
    checked = 0
    for n in pair.truth["nodules"]:
        if n["status"] == "resolved":
            assert any(math.dist(r["center_mm"], n["prior_center_mm"]) < 5 for r in comparison["resolved"]), n
            continue
        row, dist = nearest(rows, n["center_mm"])
        assert dist < 5, n
        group = groups[str(row.tracking_uid)]
        assert group["Change since prior exam"] == STATUS_MEANING[str(row.comparison_status)]
        assert group["Lung-RADS assessment category"].startswith(f"Lung-RADS {row.lung_rads}")
        if n["status"] == "new":
            assert row.comparison_status == "new" and row.prior_finding_id is None and row.lung_rads == "4A"
            assert row.tracking_uid not in prior_uids.values() and "Volume doubling time" not in group
            continue
        if n["prior_diameter_mm"] < 6:
            continue  # the demo detector may miss a < 6 mm prior
        checked += 1
        # the nodule keeps its identity: the prior's Tracking UID, in the rows and the SR
        assert row.prior_finding_id in prior_uids and row.tracking_uid == prior_uids[row.prior_finding_id]
        assert row.comparison_status == n["status"] and row.interval_days == 365
        assert group["Prior exam mean diameter"] == pytest.approx(row.prior_mean_diameter_mm, abs=0.05)
        assert group["Prior exam volume"] == pytest.approx(row.prior_volume_mm3, abs=0.05)
        assert group["Volume change since prior exam"] == pytest.approx(row.volume_change_pct, abs=0.05)
        if n["status"] == "growing":
            assert row.doubling_time_days == pytest.approx(n["doubling_time_days"], rel=0.15), (n, row.doubling_time_days)
            assert group["Volume doubling time"] == pytest.approx(row.doubling_time_days, abs=0.05)
            assert row.lung_rads_growth is True and group["Lung-RADS growth (mean diameter > 1.5 mm in 12 months)"] == "Present"
        else:
            assert row.doubling_time_days is None and group["Volume doubling time"] == "not growing"
            assert row.lung_rads == "2"  # a 4A nodule stable for 12 months
    assert checked >= 3
    # report level: the prior study and its SR, the resolved nodule
    assert report_texts(sr, "Prior study instance UID") == [pair.prior.sr.StudyInstanceUID]
    assert report_texts(sr, "Previous Reports") == [pair.prior.sr.SOPInstanceUID]
    assert len(report_texts(sr, "Prior exam nodule not seen (resolved)")) == len(comparison["resolved"]) >= 1
    with pair.node.db.session() as s:
        [event] = s.execute(select(Event).where(Event.job_id == job.id, Event.code == int(EventCode.PRIOR_COMPARED))).scalars()
    assert "follow-up Lung-RADS 4B" in event.message


def test_follow_up_sr_is_valid_and_reads_back_with_highdicom(pair: Pair, tmp_path: Path) -> None:
    import highdicom as hd

    from tests.results.dicom_validators import dciodvfy, dsrdump

    path = tmp_path / "sr.dcm"
    pair.current.sr.save_as(path, enforce_file_format=True)
    report = dciodvfy(path)
    assert not report.errors and not report.warnings, report.output
    dump = dsrdump(path)
    assert not dump.errors and not dump.warnings, dump.output
    sr = hd.sr.srread(path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert {str(g.tracking_uid) for g in groups} == {r.tracking_uid for r in pair.current.rows}
    names = {m.name.meaning for g in groups for m in g.get_measurements()}
    assert {"Prior exam mean diameter", "Volume change since prior exam", "Volume doubling time"} <= names


def test_follow_up_sends_each_matched_nodule_side_by_side_with_its_prior(pair: Pair) -> None:
    """Per matched nodule one secondary capture: the prior's key slice and the current one, in the
    overlay series of the current exam; none for a new nodule."""
    job, rows = pair.current.job, pair.current.rows
    with pair.node.db.session() as s:
        paths = s.execute(select(Delivery.path).where(Delivery.job_id == job.id,
                                                      Delivery.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7")).scalars().all()
    images = [dcmread(pair.node.settings.outbox_dir / p) for p in paths]
    side_by_side = [ds for ds in images if str(ds.get("ImageComments", "")).startswith("Prior ")]
    matched = [r for r in rows if r.prior_finding_id is not None]
    assert matched and len(side_by_side) == len(matched)
    with pair.node.db.session() as s:
        prior_rows = {r.id: r for r in s.execute(select(FindingRow).where(
            FindingRow.id.in_([r.prior_finding_id for r in matched]))).scalars()}
    per_nodule = [ds for ds in images if ds not in side_by_side]
    for ds in side_by_side:
        assert ds.StudyInstanceUID == pair.current.sr.StudyInstanceUID
        assert ds.SeriesInstanceUID == per_nodule[0].SeriesInstanceUID and ds.BurnedInAnnotation == "YES"
        sources = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
        # one current key slice and the key slice of the prior nodule it was matched with
        assert any(sources == {r.sop_instance_uid, prior_rows[int(r.prior_finding_id)].sop_instance_uid}
                   for r in matched), sources


def test_the_other_earlier_studies_are_listed_beside_the_one_compared() -> None:
    """Several priors: the most recent suitable one is used, the others named in the summary and the SR."""
    from dicomnode.process.follow_up import not_compared
    from dicomnode.process.pipelines import PriorExam
    from inference.findings import ModelIdentity, SeriesResult, Verdict

    result = SeriesResult("1.2.3", Verdict.NEGATIVE, 0.0, ModelIdentity("m", "1", "0" * 64, "onnxruntime-cpu"), [])
    others = ["1.2.3.4 (20240105, PACS)", "1.2.3.5 (20230110, this node)"]
    outcome = not_compared(result, [], "prior not available: no association", PriorExam(False, "x", others=others))
    assert outcome.summary["other_priors"] == others
    assert outcome.sr.statement == ("prior not available: no association; other earlier studies not compared: "
                                    "1.2.3.4 (20240105, PACS), 1.2.3.5 (20230110, this node)")


def test_an_s_finding_the_prior_had_too_says_it_may_be_known() -> None:
    """v2022: no S is needed for a finding already known. The follow-up's S findings that the prior exam (its stored
    summary) had too say so, coronary calcium with the prior's score; one new since the prior says nothing more; a
    prior stored before the S modifier has nothing to compare."""
    from dicomnode.process.follow_up import known_on_prior, not_compared
    from dicomnode.process.pipelines import PriorExam
    from inference.findings import (CoronaryCalciumSummary, ExamSummary, ModelIdentity, OtherFinding, RiskInputs,
                                    SeriesResult, Verdict)

    exam = ExamSummary("2", "12-month LDCT", True, RiskInputs(67.0, "male", "no", True),
                       coronary_calcium=CoronaryCalciumSummary(412, "severe", 7, 96.4, 130.0),
                       significant_findings=(OtherFinding("coronary_calcium", "severe coronary artery calcification"),
                                             OtherFinding("emphysema", "emphysema (LAA-950 8.1 %)")))
    prior_exam = {"lung_rads": "2", "coronary_calcium": {"agatston": 268, "grade": "moderate"},
                  "significant_findings": [{"kind": "coronary_calcium", "text": "moderate coronary artery calcification"}]}
    marked = known_on_prior(exam, prior_exam)
    assert [f.text for f in marked.significant_findings] == [
        "severe coronary artery calcification; on the prior exam too, Agatston-equivalent 268 there, so it may be known",
        "emphysema (LAA-950 8.1 %)"]  # emphysema is new since the prior
    assert marked.lung_rads_label == "2S" and marked.to_json()["significant_findings"][1]["kind"] == "emphysema"
    assert known_on_prior(exam, {"lung_rads": "2"}) == exam and known_on_prior(exam, None) == exam

    result = SeriesResult("1.2.3", Verdict.NEGATIVE, 0.0, ModelIdentity("m", "1", "0" * 64, "onnxruntime-cpu"), [],
                          exam=exam)
    prior = PriorExam(True, "prior: 1.2.3.4 (20250105, this node)", exam=prior_exam)
    outcome = not_compared(result, [], "prior not available: the comparison failed", prior)
    assert outcome.result.exam is not None and "may be known" in outcome.result.exam.significant_findings[0].text


def test_an_earlier_chest_ct_found_and_not_compared_points_the_reader_to_lung_rads_0() -> None:
    """v2022 category 0 covers "prior chest CT examination(s) being located for comparison". A prior that the C-FIND
    found and that could not be retrieved (or read, or compared) is named in the exam's statement beside the baseline
    category, which stays; where no earlier chest CT was found, or the peers could not be asked, nothing is said."""
    from dicomnode.process.follow_up import not_compared
    from dicomnode.process.pipelines import PriorExam
    from inference.findings import ExamSummary, ModelIdentity, RiskInputs, SeriesResult, Verdict

    exam = ExamSummary("4A", "3-month LDCT", True, RiskInputs(67.0, "male", "no", True),
                       reason="image noise 61 HU, over the 50 HU up to which LAA-950 holds")
    result = SeriesResult("1.2.3", Verdict.SUSPICIOUS, 0.12, ModelIdentity("m", "1", "0" * 64, "onnxruntime-cpu"), [],
                          exam=exam)
    label = "study 1.2.3.4 of 20250105 (ORTHANC)"
    unretrieved = PriorExam(False, "prior not available: ORTHANC: C-MOVE refused with status 0xC000 (failed)",
                            not_compared=label)
    outcome = not_compared(result, [], unretrieved.summary, unretrieved, exists=unretrieved.not_compared)
    assert outcome.result.exam is not None
    assert outcome.result.exam.lung_rads == "4A" and outcome.result.verdict is Verdict.SUSPICIOUS  # not changed
    assert outcome.result.exam.reason == (
        "image noise 61 HU, over the 50 HU up to which LAA-950 holds; an earlier chest CT of the patient exists "
        "(study 1.2.3.4 of 20250105 (ORTHANC)) and was not compared: the category here reads the exam as a baseline; "
        "Lung-RADS v2022 gives category 0 while a prior chest CT is being located for comparison (the reader's call)")
    assert outcome.summary["prior_not_compared"] == label
    assert outcome.sr.statement == unretrieved.summary  # the comparison statement still says why
    # said once, however often the exam passes through
    assert outcome.result.exam.with_caveat(outcome.result.exam.reason.split("; ", 1)[1]) == outcome.result.exam

    for nothing in (PriorExam(False, "prior not available: no earlier chest CT of the patient found"),
                    PriorExam(False, "prior not available: no association with ORTHANC@127.0.0.1:9")):
        plain = not_compared(result, [], nothing.summary, nothing, exists=nothing.not_compared)
        assert plain.result.exam == exam and "prior_not_compared" not in plain.summary


def test_a_prior_whose_comparison_failed_is_named_for_the_reader() -> None:
    """The prior was there (found, analysed) and the comparison itself failed: the reader can still compare it."""
    from dicomnode.config import Settings
    from dicomnode.process.follow_up import follow_up
    from dicomnode.process.pipelines import PipelineContext, PriorExam
    from dicomnode.results.options import ResultOptions
    from inference.findings import ExamSummary, ModelIdentity, RiskInputs, SeriesResult, Verdict

    exam = ExamSummary("2", "12-month LDCT", True, RiskInputs(67.0, "male", "no", True))
    model = ModelIdentity("m", "1", "0" * 64, "onnxruntime-cpu")
    result = SeriesResult("1.2.3", Verdict.NEGATIVE, 0.0, model, [], exam=exam)
    prior = PriorExam(True, "prior: study 1.2.3.4 of 20250105 (this node)",
                      result=SeriesResult("1.2.3.9", Verdict.NEGATIVE, 0.0, model, []))  # no images: it fails
    context = PipelineContext(1, "1.2.3", Settings(), series_id=7, prior=lambda _series, _analyse: prior)
    outcome = follow_up([], result, context, ResultOptions(), lambda _datasets: result)
    assert outcome is not None and outcome.summary["reason"].startswith("prior not available: the comparison failed")
    assert outcome.result.exam is not None and outcome.result.exam.reason is not None
    assert outcome.result.exam.reason.startswith(
        "an earlier chest CT of the patient exists (study 1.2.3.4 of 20250105 (this node)) and was not compared")
