"""One sealing interval: beat fires the audit seal every ``audit_seal_interval_seconds``, as the
embedded runner seals once per slot of that length."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from billwatch.audit.models import AuditSeal
from billwatch.audit.sealing import seal_period
from billwatch.db import Database, utcnow
from billwatch.jobs import tasks
from billwatch.jobs.celery_app import AUDIT_SEAL_TASK, beat_schedule, make_celery
from billwatch.jobs.models import JobRun, RunStatus
from billwatch.jobs.service import AUDIT_SEAL
from tests.alerts.helpers import webhook_failures
from tests.alerts.mailbox import wait_until
from tests.jobs.workers import Worker, new_queue, publisher, worker_settings
from tests.support import free_port
from tests.support import test_settings as make_settings

NOWHERE = "http://127.0.0.1:9"


def test_beat_seals_at_the_configured_interval() -> None:
    tuned = make_settings("sqlite+aiosqlite://", NOWHERE, audit_seal_interval_seconds=120)
    assert beat_schedule(tuned)["audit-seal"] == {"task": AUDIT_SEAL_TASK, "schedule": 120.0}
    assert make_celery(tuned).conf.beat_schedule["audit-seal"]["schedule"] == 120.0


def test_the_default_interval_is_the_embedded_five_minutes() -> None:
    settings = make_settings("sqlite+aiosqlite://", NOWHERE)
    assert settings.audit_seal_interval_seconds == 300
    assert beat_schedule(settings)["audit-seal"]["schedule"] == 300.0


def test_the_beat_task_is_registered_with_the_worker() -> None:
    assert tasks.audit_seal.name == AUDIT_SEAL_TASK
    assert AUDIT_SEAL_TASK in tasks.app.tasks


class TestTheWorkerSeals:
    async def test_the_beat_task_seals_new_rows_once_per_slot(
            self, db: Database, database_url: str, tmp_path: Path) -> None:
        await webhook_failures(db, 3)  # three unsealed audit rows
        settings = worker_settings(database_url, free_port(), new_queue())
        celery = publisher(settings)
        worker = Worker(settings, tmp_path / "worker")
        try:
            before = utcnow()
            first = celery.send_task(AUDIT_SEAL_TASK)
            await wait_until(first.ready, within=60, what="the seal task")
            assert first.get(timeout=5) == {"ran": True, "sealed": 3, "head_seq": 3}
            second = celery.send_task(AUDIT_SEAL_TASK)
            await wait_until(second.ready, within=60, what="the second seal task")
            after = utcnow()
            assert second.get(timeout=5) in (  # the same slot, or (at a boundary) nothing new
                {"ran": False}, {"ran": True, "sealed": 0, "head_seq": None})
        finally:
            worker.stop()
            celery.close()
        async with db.sessionmaker() as session:
            seals = (await session.scalars(select(AuditSeal.seq))).all()
            runs = (await session.scalars(select(JobRun).where(JobRun.job == AUDIT_SEAL))).all()
        assert sorted(seals) == [1, 2, 3]
        assert runs and all(run.status is RunStatus.SUCCEEDED for run in runs)
        slots = {seal_period(before, 300), seal_period(after, 300)}  # the worker's default
        assert {run.period for run in runs} <= slots
        assert list((tmp_path / "worker" / "audit-checkpoints").glob("checkpoint-*"))
