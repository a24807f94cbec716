"""Retention against a real audit database and real files: what may go, what must stay, under
pressure, dry run, crash recovery, symlinks. The clock is faked by the timestamps in the database
(a series "delivered 40 days ago"), never by sleeping."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.retention.executor import Executor
from dicomnode.retention.policy import plan
from dicomnode.retention.service import run_pass
from dicomnode.retention.survey import data_bytes, series_facts
from storage.db import Database
from storage.events import EventCode
from storage.models import Delivery, Event, Instance, Job, Series, Study, utcnow
from storage.queries import series_files_present, series_files_removed_at
from storage.states import DeliveryState, JobState, SeriesState
from tests.conftest import REPO_ROOT
from tests.node.helpers import PYTHON

ROOT = "1.2.826.0.1.3680043.8.498.77"


@dataclass
class Made:
    uid: str
    source: list[Path]
    outbox: list[Path]

    @property
    def source_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.source)

    @property
    def outbox_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.outbox)


class World:
    """A node's data directory and audit database, filled row by row."""

    def __init__(self, tmp: Path, database_url: str | None = None, **retention: Any) -> None:
        # a disk at 99 % is not what these tests are about: only max_spool_gb makes pressure here
        defaults = {"high_water_percent": 99.0, "low_water_percent": 98.0}
        self.config = tmp / "node.toml"
        lines = [f"{k} = {json.dumps(v)}" for k, v in {**defaults, **retention}.items()]
        self.config.write_text("[retention]\n" + "\n".join(lines) + "\n")
        self.data_dir = tmp / "data"
        overrides: dict[str, Any] = {"node.data_dir": self.data_dir}
        if database_url:
            overrides["node.database_url"] = database_url
        self.settings: Settings = load_settings(self.config, overrides)
        for folder in (self.settings.spool_dir, self.settings.outbox_dir):
            folder.mkdir(parents=True)
        self.db = Database(self.settings.database_url)
        self.db.migrate()
        self.count = 0

    def series(self, status: SeriesState, days_ago: float, *, job: JobState | None = JobState.DONE,
               deliveries: tuple[DeliveryState, ...] = (DeliveryState.DELIVERED,), files: int = 3, size: int = 1000,
               outbox_files: int = 2) -> Made:
        """A series settled `days_ago` (completed, its job finished, its deliveries sent then)."""
        self.count += 1
        n = self.count
        study_uid, uid = f"{ROOT}.{n}", f"{ROOT}.{n}.1"
        then = utcnow() - timedelta(days=days_ago)
        made = Made(uid, [], [])
        with self.db.session() as s:
            study = Study(study_instance_uid=study_uid)
            s.add(study)
            s.flush()
            series = Series(series_instance_uid=uid, study_id=study.id, modality="CT", status=status,
                            first_received_at=then, completed_at=None if status == SeriesState.RECEIVING else then)
            s.add(series)
            s.flush()
            for i in range(files):
                relative = f"{study_uid}/{uid}/{uid}.{i}.dcm"
                path = self.settings.spool_dir / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(size))
                made.source.append(path)
                s.add(Instance(sop_instance_uid=f"{uid}.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                               transfer_syntax_uid="1.2.840.10008.1.2.1", series_id=series.id, path=relative,
                               size_bytes=size, received_at=then))
            if status == SeriesState.ROUTED and job is not None:
                row = Job(series_id=series.id, pipeline="lung-nodule", destinations=["PACS"], state=job, queued_at=then,
                          finished_at=then if job in (JobState.DONE, JobState.FAILED) else None)
                s.add(row)
                s.flush()
                for i in range(outbox_files if job == JobState.DONE else 0):
                    relative = f"{uid}/{uid}.9{i}.dcm"
                    path = self.settings.outbox_dir / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(os.urandom(500))
                    made.outbox.append(path)
                    for state in deliveries:
                        s.add(Delivery(job_id=row.id, destination="PACS", ae_title="PACS", host="127.0.0.1", port=4242,
                                       sop_instance_uid=f"{uid}.9{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                                       path=relative, state=state, created_at=then, next_attempt_at=then,
                                       delivered_at=then if state == DeliveryState.DELIVERED else None))
        return made

    def events(self, code: EventCode) -> list[Event]:
        with self.db.session() as s:
            return list(s.execute(select(Event).where(Event.code == int(code)).order_by(Event.id)).scalars())

    def present(self, uid: str) -> bool:
        with self.db.session() as s:
            return series_files_present(s, uid)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "dicomnode.cli", "retention", "--config", str(self.config),
                               "--data-dir", str(self.data_dir), *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _gone(made: Made) -> bool:
    return not any(p.exists() for p in made.source + made.outbox)


def _all_there(made: Made) -> bool:
    return all(p.is_file() for p in made.source + made.outbox)


def test_age_policy_removes_only_series_settled_longer_ago_than_the_period(world: World) -> None:
    old = world.series(SeriesState.ROUTED, days_ago=40)
    young = world.series(SeriesState.ROUTED, days_ago=5)
    ignored = world.series(SeriesState.IGNORED, days_ago=31, job=None)
    not_selected = world.series(SeriesState.NOT_SELECTED, days_ago=29, job=None)
    sizes = {(old.uid, "source"): old.source_bytes, (old.uid, "outbox"): old.outbox_bytes,
             (ignored.uid, "source"): ignored.source_bytes}

    report = run_pass(world.db, world.settings)

    assert _gone(old) and _gone(ignored)
    assert _all_there(young) and _all_there(not_selected)
    # the folders went with the files; the roots stay
    assert not (world.settings.outbox_dir / old.uid).exists() and not old.source[0].parent.exists()
    assert world.settings.spool_dir.is_dir() and world.settings.outbox_dir.is_dir()
    events = world.events(EventCode.RETENTION_DELETED)
    assert {(e.series_instance_uid, e.details["what"]): e.details["bytes"] for e in events} == sizes
    assert all(e.details["reason"] == "age" and "files removed by retention on" in e.message for e in events)
    assert {(r.series_uid, r.what) for r in report.removed} == set(sizes)
    # the rows are the record: kept, and marked
    with world.db.session() as s:
        marks = dict(s.execute(select(Instance.sop_instance_uid, Instance.deleted_at)).all())
        removed_at = series_files_removed_at(s, old.uid)
        assert s.execute(select(Series.results_deleted_at).where(Series.series_instance_uid == old.uid)).scalar()
    assert len(marks) == 12 and sum(v is not None for v in marks.values()) == 6
    assert removed_at is not None and utcnow() - removed_at < timedelta(hours=1)
    assert not world.present(old.uid) and world.present(young.uid) and world.present(not_selected.uid)
    # a second pass finds nothing more to do
    assert run_pass(world.db, world.settings).plan.removals == []
    assert len(world.events(EventCode.RETENTION_DELETED)) == 3


def test_source_and_results_periods_apply_separately(tmp_path: Path) -> None:
    world = World(tmp_path, source_days=7, results_days=60)
    series = world.series(SeriesState.ROUTED, days_ago=10)
    run_pass(world.db, world.settings)
    assert not any(p.exists() for p in series.source)
    assert all(p.is_file() for p in series.outbox)


def test_results_of_a_route_without_destinations_go_after_their_own_period(tmp_path: Path) -> None:
    world = World(tmp_path, source_days=7, results_days=60)
    series = world.series(SeriesState.ROUTED, days_ago=10, deliveries=())  # results in the outbox, sent nowhere
    run_pass(world.db, world.settings)
    assert not any(p.exists() for p in series.source) and all(p.is_file() for p in series.outbox)
    with world.db.session() as s:  # 61 days later
        s.execute(text("UPDATE jobs SET finished_at = :t"), {"t": utcnow() - timedelta(days=61)})
        s.execute(text("UPDATE series SET completed_at = :t"), {"t": utcnow() - timedelta(days=61)})
    run_pass(world.db, world.settings)
    assert _gone(series)


def test_never_removes_what_is_not_analysed_delivered_or_finished_even_under_pressure(tmp_path: Path) -> None:
    # everything is 40 days old, both periods are 0 and the spool cap is far exceeded: still nothing may go
    world = World(tmp_path, source_days=0, results_days=0, max_spool_gb=1e-6, high_water_percent=90,
                  low_water_percent=50)
    kept = [
        world.series(SeriesState.RECEIVING, 40, job=None),
        world.series(SeriesState.COMPLETE, 40, job=None),
        world.series(SeriesState.ROUTED, 40, job=JobState.QUEUED),
        world.series(SeriesState.ROUTED, 40, job=JobState.RUNNING),
        world.series(SeriesState.ROUTED, 40, job=JobState.FAILED),
        world.series(SeriesState.ROUTED, 40, deliveries=(DeliveryState.PENDING,)),
        world.series(SeriesState.ROUTED, 40, deliveries=(DeliveryState.SENDING,)),
        world.series(SeriesState.ROUTED, 40, deliveries=(DeliveryState.DEAD,)),
        # one destination got it, the other did not
        world.series(SeriesState.ROUTED, 40, deliveries=(DeliveryState.DELIVERED, DeliveryState.DEAD)),
    ]
    # a forwarded source instance (issue 13's forwarding: no job link needed) still pending
    forwarded = world.series(SeriesState.IGNORED, 40, job=None)
    with world.db.session() as s:
        s.add(Delivery(job_id=None, destination="ARCHIVE", ae_title="ARCHIVE", host="127.0.0.1", port=4242,
                       sop_instance_uid=f"{forwarded.uid}.0", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                       path=f"{forwarded.uid}/{forwarded.uid}.0.dcm", state=DeliveryState.PENDING))
    kept.append(forwarded)

    report = run_pass(world.db, world.settings)

    assert report.plan.removals == [] and report.removed == []
    assert all(_all_there(m) for m in kept)
    assert all(world.present(m.uid) for m in kept)
    assert world.events(EventCode.RETENTION_DELETED) == []
    assert report.plan.kept == {"still receiving": 1, "waiting for routing": 1, "job queued or running": 2,
                                "not analysed (job failed)": 1,
                                "delivery not sent (pending, failed or dead letter)": 5}
    # above the mark with nothing deletable: said loudly, with the numbers
    assert len(world.events(EventCode.RETENTION_HIGH_WATER)) == 1
    [skipped] = world.events(EventCode.RETENTION_SKIPPED)
    assert skipped.level == "warning" and "an admin must act" in skipped.message
    assert skipped.details["shortfall_bytes"] > 0


def test_a_series_busy_in_an_open_intake_session_is_kept(world: World) -> None:
    # routed long ago, but an association is sending it a late instance right now
    series = world.series(SeriesState.ROUTED, days_ago=40)
    run_pass(world.db, world.settings, busy=lambda uid: uid == series.uid)
    assert _all_there(series)


def test_high_water_mark_frees_the_oldest_deletable_series_first(tmp_path: Path) -> None:
    world = World(tmp_path, source_days=30, results_days=30)  # none is old enough for the age policy
    made = [world.series(SeriesState.ROUTED, days_ago=d, files=10, size=10_000) for d in (4, 1, 3, 2)]
    blocked = world.series(SeriesState.ROUTED, days_ago=9, files=10, size=10_000, deliveries=(DeliveryState.DEAD,))
    used = data_bytes(world.settings)
    assert used == 5 * (100_000 + 1000)
    # a cap the data is at 95 % of; down to 50 % means about 2.4 series' worth must go
    capacity = int(used / 0.95)
    world.settings.retention.max_spool_gb = capacity / 2**30
    world.settings.retention.low_water_percent = 50  # low before high: each assignment is validated
    world.settings.retention.high_water_percent = 90
    report = run_pass(world.db, world.settings)

    by_age = sorted(made, key=lambda m: -[4, 1, 3, 2][made.index(m)])  # oldest first: 4, 3, 2, 1 days
    assert [_gone(m) for m in by_age] == [True, True, True, False]
    assert _all_there(blocked)  # the oldest of all, but undelivered
    assert data_bytes(world.settings) <= capacity * 0.5
    [high] = world.events(EventCode.RETENTION_HIGH_WATER)
    assert high.details["need_bytes"] == used - int(capacity * 0.5)
    deleted = world.events(EventCode.RETENTION_DELETED)
    assert {e.details["reason"] for e in deleted} == {"high_water"}
    assert [e.series_instance_uid for e in deleted if e.details["what"] == "source"] == [m.uid for m in by_age[:3]]
    assert sum(e.details["bytes"] for e in deleted) == used - data_bytes(world.settings)
    assert report.plan.shortfall_bytes == 0 and world.events(EventCode.RETENTION_SKIPPED) == []


def test_dry_run_deletes_nothing_and_lists_what_the_real_run_then_removes(tmp_path: Path) -> None:
    world = World(tmp_path, source_days=30, results_days=30)
    old, young = world.series(SeriesState.ROUTED, 45), world.series(SeriesState.ROUTED, 2)

    dry = world.cli("--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert listed["dry_run"] is True
    assert [(r["series_instance_uid"], r["what"], r["bytes"], r["reason"]) for r in listed["removals"]] == [
        (old.uid, "source", old.source_bytes, "age"), (old.uid, "outbox", old.outbox_bytes, "age")]
    assert _all_there(old) and _all_there(young)
    assert world.events(EventCode.RETENTION_DELETED) == [] and world.present(old.uid)
    table = world.cli("--dry-run")
    assert table.returncode == 0 and "would remove" in table.stdout and old.uid[-12:] in table.stdout
    assert _all_there(old)

    real = world.cli("--json")
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert report["removals"] == listed["removals"]
    assert [(r["series_instance_uid"], r["what"]) for r in report["removed"]] == [(old.uid, "source"), (old.uid, "outbox")]
    assert _gone(old) and _all_there(young)
    assert len(world.events(EventCode.RETENTION_DELETED)) == 2


def test_cli_exits_1_and_warns_when_above_the_mark_with_nothing_deletable(tmp_path: Path) -> None:
    world = World(tmp_path, max_spool_gb=1e-6, high_water_percent=90, low_water_percent=50)
    world.series(SeriesState.ROUTED, 40, deliveries=(DeliveryState.DEAD,))
    result = world.cli()
    assert result.returncode == 1
    assert "WARNING" in result.stdout and "nothing else may be deleted" in result.stdout
    assert "1 series delivery not sent" in result.stdout


def test_a_removal_interrupted_after_marking_is_finished_by_the_next_pass(world: World) -> None:
    series = world.series(SeriesState.ROUTED, days_ago=40)
    removals = plan(series_facts(world.db, world.settings), world.settings.retention, utcnow()).removals
    executor = Executor(world.db, world.settings)
    purge_ids = [executor.mark(r) for r in removals]  # ... and the process dies here
    assert all(purge_ids)
    assert _all_there(series) and not world.present(series.uid)  # already unusable for a re-run
    series.source[0].unlink()  # died half-way through the deletes, even

    assert run_pass(world.db, world.settings).resumed == 2
    assert _gone(series)
    events = world.events(EventCode.RETENTION_DELETED)
    assert sorted(e.details["what"] for e in events) == ["outbox", "source"]
    assert {e.details["what"]: e.details["bytes"] for e in events} == {"source": 3000, "outbox": 1000}
    # finishing twice (the CLI and the node at once) audits once
    assert [executor.finish(i) for i in purge_ids if i is not None] == [None, None]
    assert len(world.events(EventCode.RETENTION_DELETED)) == 2


def test_a_file_written_again_after_marking_is_kept(world: World) -> None:
    series = world.series(SeriesState.ROUTED, days_ago=40)
    removals = plan(series_facts(world.db, world.settings), world.settings.retention, utcnow()).removals
    executor = Executor(world.db, world.settings)
    purge_ids = [executor.mark(r) for r in removals]
    # a new job rewrites a result with the same deterministic UID before the files go
    series.outbox[0].write_bytes(b"newer result" * 100)
    for purge_id in purge_ids:
        assert purge_id is not None and executor.finish(purge_id) is not None
    assert series.outbox[0].read_bytes() == b"newer result" * 100 and not series.outbox[1].exists()
    [outbox] = [e for e in world.events(EventCode.RETENTION_DELETED) if e.details["what"] == "outbox"]
    assert outbox.details["kept_changed"] == 1


def test_a_series_that_changed_after_planning_is_not_marked(world: World) -> None:
    series = world.series(SeriesState.ROUTED, days_ago=40)
    removals = plan(series_facts(world.db, world.settings), world.settings.retention, utcnow()).removals
    with world.db.session() as s:  # a late instance re-opened it in between
        s.execute(text("UPDATE series SET status = 'receiving'"))
    assert [Executor(world.db, world.settings).mark(r) for r in removals] == [None, None]
    assert _all_there(series) and world.present(series.uid)


def test_never_follows_a_symlink_out_of_the_data_dir(world: World, tmp_path: Path) -> None:
    series = world.series(SeriesState.ROUTED, days_ago=40)
    # the series folder in the spool is (now) a link to a folder outside the data directory
    outside = tmp_path / "outside"
    folder = series.source[0].parent
    folder.rename(outside)
    folder.symlink_to(outside, target_is_directory=True)
    # and one outbox file is a link to a file outside
    precious = tmp_path / "precious.dcm"
    precious.write_bytes(b"not ours")
    series.outbox[0].unlink()
    series.outbox[0].symlink_to(precious)

    run_pass(world.db, world.settings)

    assert sorted(p.name for p in outside.iterdir()) == sorted(p.name for p in series.source)
    assert precious.read_bytes() == b"not ours"
    assert not series.outbox[0].is_symlink()  # the link itself went, not what it points to
    [source] = [e for e in world.events(EventCode.RETENTION_DELETED) if e.details["what"] == "source"]
    assert source.details["refused"] == 3 and "refused 3 outside the data directory" in source.message


@pytest.mark.parametrize(("key", "value", "message"), [
    ("retention.low_water_percent", 95.0, "must be below retention.high_water_percent"),
    ("retention.high_water_percent", 100.0, "less than or equal to 99"),
    ("retention.low_water_percent", 0.0, "greater than or equal to 1"),
    ("retention.source_days", -1.0, "greater than or equal to 0"),
    ("retention.max_spool_gb", -1.0, "greater than or equal to 0"),
])
def test_invalid_retention_settings_are_named(tmp_path: Path, key: str, value: float, message: str) -> None:
    section, name = key.split(".")
    config = tmp_path / "node.toml"
    config.write_text(f"[{section}]\n{name} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert key in str(err.value) and message in str(err.value)


def test_migration_0005_steps_down_and_up_keeping_rows(world: World) -> None:
    from alembic import command

    from storage.db import alembic_config

    series = world.series(SeriesState.ROUTED, days_ago=40)
    run_pass(world.db, world.settings)
    config = alembic_config(world.db.engine)
    command.downgrade(config, "0004")
    command.upgrade(config, "head")
    with world.db.session() as s:
        assert s.execute(select(Series.series_instance_uid)).scalars().all() == [series.uid]
        assert s.execute(select(Instance.deleted_at)).scalars().all() == [None, None, None]  # the marks went down
        assert s.execute(select(Job.state)).scalars().all() == [JobState.DONE]


@pytest.mark.parametrize("link", ["sop_instance_uid", "outbox_folder"])
def test_a_pending_delivery_linked_only_by_instance_or_folder_keeps_the_series(world: World, link: str) -> None:
    # forwards of source instances (issue 13) may carry no job: the instance UID or the outbox folder names the series
    series = world.series(SeriesState.IGNORED, 40, job=None)
    sop = f"{series.uid}.0" if link == "sop_instance_uid" else "1.2.3.4.5"
    path = f"{series.uid}/forward.dcm" if link == "outbox_folder" else "1.2.3/forward.dcm"
    with world.db.session() as s:
        s.add(Delivery(job_id=None, destination="ARCHIVE", ae_title="ARCHIVE", host="127.0.0.1", port=4242,
                       sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", path=path,
                       state=DeliveryState.DEAD))
    assert run_pass(world.db, world.settings).plan.kept == {"delivery not sent (pending, failed or dead letter)": 1}
    assert _all_there(series)


def test_a_job_on_a_series_whose_files_retention_removed_says_so(tmp_path: Path) -> None:
    """A series reopened by a partial resend after retention must not be analysed as if whole: the
    job fails naming retention, not with a bare 'No such file'."""
    from dicomnode.process.jobs import SourceFilesRemoved, load_series_datasets
    from dicomnode.receive.spool import Spool

    world = World(tmp_path, source_days=30, results_days=30)
    old = world.series(SeriesState.ROUTED, 45)
    assert world.cli("--json").returncode == 0
    with world.db.session() as s:
        series_id = s.execute(select(Series.id).where(Series.series_instance_uid == old.uid)).scalar_one()
    with pytest.raises(SourceFilesRemoved, match=r"3 of 3 instances of this series were removed by retention"):
        load_series_datasets(world.db, Spool(world.settings.spool_dir, 0), series_id)


def test_retry_of_a_delivery_whose_file_retention_removed_is_refused_naming_retention(tmp_path: Path) -> None:
    """`dicomnode retry --delivery N` of a delivered result after retention removed its outbox file
    used to queue it again, to dead-letter after every retry; now it is refused with the reason."""
    world = World(tmp_path, source_days=30, results_days=30)
    old = world.series(SeriesState.ROUTED, 45)
    assert world.cli("--json").returncode == 0
    with world.db.session() as s:
        delivery_id = s.execute(select(Delivery.id).join(Job, Delivery.job_id == Job.id).join(Series)
                                .where(Series.series_instance_uid == old.uid)).scalars().first()
    assert delivery_id is not None
    retry = subprocess.run([PYTHON, "-m", "dicomnode.cli", "retry", "--delivery", str(delivery_id), "--queue-only",
                            "--config", str(world.config), "--data-dir", str(world.data_dir)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert retry.returncode == 2 and "removed by retention" in retry.stdout + retry.stderr, retry
    with world.db.session() as s:
        assert s.get(Delivery, delivery_id).state == DeliveryState.DELIVERED  # not queued again
