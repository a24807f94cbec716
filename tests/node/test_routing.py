"""Routing on a real SQLite audit database: rules, ignored-with-reason, one series per study."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import Route, RouteMatch
from dicomnode.process.routing import Router, SeriesFacts, first_matching_route, mismatch
from storage.db import Database
from storage.models import Job, Series, Study


def facts(**kw) -> SeriesFacts:
    base = dict(modality="CT", body_part="CHEST", image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
                description="Thorax 1.0 B45f", slice_thickness=1.0, slice_count=300, calling_ae="CT01")
    return SeriesFacts(**{**base, **kw})


@pytest.mark.parametrize("match, changed, reason", [
    (RouteMatch(modality=["CT"]), {"modality": "MR"}, "modality MR not in ['CT']"),
    (RouteMatch(body_part=["chest", "lung"]), {"body_part": "HEAD"}, "body part HEAD"),
    (RouteMatch(image_type_contains=["AXIAL"]), {"image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "lacks AXIAL"),
    (RouteMatch(series_description_regex="thorax|lung"), {"description": "Abdomen"}, "does not match"),
    (RouteMatch(max_slice_thickness_mm=2.5), {"slice_thickness": 5.0}, "above 2.5 mm"),
    (RouteMatch(min_slice_thickness_mm=0.5), {"slice_thickness": None}, "below 0.5 mm"),
    (RouteMatch(min_slices=50), {"slice_count": 2}, "fewer than 50"),
    (RouteMatch(max_slices=1000), {"slice_count": 2000}, "more than 1000"),
    (RouteMatch(calling_ae=["CT01"]), {"calling_ae": "MR02"}, "calling AE 'MR02'"),
])
def test_each_rule_matches_and_names_why_not(match, changed, reason):
    route = Route(name="r", match=match)
    assert mismatch(route, facts()) is None
    why = mismatch(route, facts(**changed))
    assert why is not None and reason in why


def test_first_matching_route_wins_and_reasons_name_every_route():
    routes = [Route(name="thin", match=RouteMatch(modality=["CT"], max_slice_thickness_mm=1.5)),
              Route(name="any-ct", match=RouteMatch(modality=["CT"]))]
    assert first_matching_route(routes, facts())[0].name == "thin"
    assert first_matching_route(routes, facts(slice_thickness=5.0))[0].name == "any-ct"
    route, reason = first_matching_route(routes, facts(modality="PT"))
    assert route is None and "route 'thin'" in reason and "route 'any-ct'" in reason


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    database.migrate()
    return database


def _add_study(db: Database, uid: str) -> int:
    with db.session() as s:
        study = Study(study_instance_uid=uid)
        s.add(study)
        s.flush()
        return study.id


def _add_series(db: Database, study_id: int, number: int, thickness: float, count: int, status: str,
                image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", modality: str = "CT") -> int:
    with db.session() as s:
        row = Series(series_instance_uid=f"1.2.3.{number}", study_id=study_id, modality=modality, series_number=number,
                     image_type=image_type, slice_thickness=thickness, instance_count=count, status=status)
        s.add(row)
        s.flush()
        return row.id


def _enqueue(s, series, route) -> int:
    job = Job(series_id=series.id, pipeline=route.pipeline, route_name=route.name, state="queued")
    s.add(job)
    s.flush()
    return job.id


def test_one_series_per_study_waits_for_the_study_and_picks_the_thinnest_axial(db):
    study_id = _add_study(db, "1.2.3")
    route = Route(name="lung", match=RouteMatch(modality=["CT"]), one_series_per_study=True)
    router = Router(db, [route], _enqueue)
    localizer = _add_series(db, study_id, 1, 2.0, 2, "complete", "ORIGINAL\\PRIMARY\\LOCALIZER")
    thick = _add_series(db, study_id, 2, 5.0, 60, "complete")
    thin = _add_series(db, study_id, 3, 1.0, 300, "receiving")
    router.on_series_complete(thick)
    router.on_series_complete(localizer)
    with db.session() as s:
        assert s.query(Job).count() == 0, "no choice while a series of the study is still arriving"
        s.get(Series, thin).status = "complete"
    router.on_series_complete(thin)
    with db.session() as s:
        jobs = s.query(Job).all()
        assert [j.series_id for j in jobs] == [thin]
        assert s.get(Series, thin).status == "routed"
        for other in (thick, localizer):
            row = s.get(Series, other)
            assert row.status == "not_selected"
            assert "chose series 3" in row.status_reason


def test_unmatched_series_is_ignored_with_the_reason(db):
    study_id = _add_study(db, "9.9")
    router = Router(db, [Route(name="ct-only", match=RouteMatch(modality=["CT"]))], _enqueue)
    sr = _add_series(db, study_id, 7, 1.0, 1, "complete", modality="SR")
    router.on_series_complete(sr)
    with db.session() as s:
        row = s.get(Series, sr)
        assert row.status == "ignored"
        assert "modality SR not in ['CT']" in row.status_reason
        assert s.query(Job).count() == 0


def test_routing_wakes_the_job_workers_after_the_job_is_committed(db):
    """The node wakes its job workers from this callback: a woken worker must already see the queued job
    (woken before the commit, it would find nothing and sleep until its next poll)."""
    study_id = _add_study(db, "4.4")
    seen: list[list[tuple[int, str]]] = []

    def wake() -> None:  # a worker's first look, from another session
        with db.session() as s:
            seen.append([(j.series_id, j.state) for j in s.query(Job).all()])

    router = Router(db, [Route(name="ct", match=RouteMatch(modality=["CT"]))], _enqueue, on_job_queued=wake)
    ct = _add_series(db, study_id, 1, 1.0, 100, "complete")
    router.on_series_complete(ct)
    assert seen == [[(ct, "queued")]]
    mr = _add_series(db, study_id, 2, 1.0, 100, "complete", modality="MR")
    router.on_series_complete(mr)  # ignored: nothing queued, nobody woken
    assert len(seen) == 1
