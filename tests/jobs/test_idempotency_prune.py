"""Expired client idempotency keys are pruned hourly, by the embedded runner and by a Celery worker."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from celery.schedules import crontab
from sqlalchemy import select

from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.idempotency import KEY_TTL, IdempotencyKey, KeyState
from billwatch.jobs.celery_app import IDEMPOTENCY_PRUNE_TASK, beat_schedule
from billwatch.jobs.embedded import EmbeddedRunner
from billwatch.jobs.models import JobRun, RunStatus
from billwatch.jobs.service import IDEMPOTENCY_PRUNE, hour_floor, hour_period
from tests.alerts.mailbox import wait_until
from tests.jobs.workers import Worker, new_queue, publisher, worker_settings
from tests.support import free_port


async def add_keys(db: Database, *ages: timedelta) -> list[uuid.UUID]:
    """One completed key per age, created that long ago."""
    now = utcnow()
    rows = [IdempotencyKey(id=uuid.uuid4(), actor_key=f"user:{uuid.uuid4()}", method="POST",
                           route="/billing/checkout", key=uuid.uuid4().hex, request_hash="0" * 64,
                           state=KeyState.COMPLETED, response_status=201, response_body="{}",
                           response_media_type="application/json", created_at=now - age)
            for age in ages]
    async with db.unit_of_work() as session:
        session.add_all(rows)
    return [row.id for row in rows]


async def key_ids(db: Database) -> set[uuid.UUID]:
    async with db.sessionmaker() as session:
        return set((await session.scalars(select(IdempotencyKey.id))).all())


async def prune_runs(db: Database) -> list[JobRun]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(
            select(JobRun).where(JobRun.job == IDEMPOTENCY_PRUNE))).all())


class TestEmbeddedRunner:
    async def test_a_tick_prunes_expired_keys_once_per_hour(self, db: Database,
                                                            settings: Settings) -> None:
        _, fresh = await add_keys(db, KEY_TTL + timedelta(minutes=1), timedelta(hours=20))
        now = utcnow()
        runner = EmbeddedRunner(db, settings, schedule=True)
        await runner.tick(now=now)
        assert await key_ids(db) == {fresh}
        [run] = await prune_runs(db)
        assert run.status is RunStatus.SUCCEEDED and run.result == {"pruned": 1}
        assert run.period == hour_period(hour_floor(now))

        [late] = await add_keys(db, KEY_TTL + timedelta(hours=2))  # expired, but this hour ran
        await runner.tick(now=now)
        assert await key_ids(db) == {fresh, late}
        assert len(await prune_runs(db)) == 1
        await runner.tick(now=now + timedelta(hours=1))  # the next hour takes it
        assert await key_ids(db) == {fresh}

    async def test_an_unscheduled_runner_leaves_the_keys_to_the_scheduler(
            self, db: Database, settings: Settings) -> None:
        await add_keys(db, KEY_TTL + timedelta(minutes=1))
        await EmbeddedRunner(db, settings, schedule=False).tick()
        assert len(await key_ids(db)) == 1 and await prune_runs(db) == []


class TestCeleryWorker:
    async def test_the_task_prunes_once_per_hour(self, db: Database, database_url: str,
                                                 tmp_path: Path) -> None:
        _, fresh = await add_keys(db, KEY_TTL + timedelta(minutes=1), timedelta(hours=1))
        settings = worker_settings(database_url, free_port(), new_queue())
        celery = publisher(settings)
        worker = Worker(settings, tmp_path / "worker")
        try:
            first = celery.send_task(IDEMPOTENCY_PRUNE_TASK)
            await wait_until(first.ready, within=60, what="the prune task")
            assert first.get(timeout=5) == {"ran": True, "pruned": 1}
            second = celery.send_task(IDEMPOTENCY_PRUNE_TASK)
            await wait_until(second.ready, within=60, what="the second prune task")
            assert second.get(timeout=5) == {"ran": False}
        finally:
            worker.stop()
            celery.close()
        assert await key_ids(db) == {fresh}
        [run] = await prune_runs(db)
        assert run.status is RunStatus.SUCCEEDED and run.task_id == first.id


def test_beat_fires_the_prune_hourly() -> None:
    entry = beat_schedule()["idempotency-prune"]
    assert entry == {"task": IDEMPOTENCY_PRUNE_TASK, "schedule": crontab(minute="45")}

