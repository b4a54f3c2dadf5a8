"""The hourly audit checkpoint and Stripe reconcile jobs, and the beat schedule that fires them."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from celery.schedules import crontab
from sqlalchemy import select

from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import service
from billwatch.jobs.celery_app import beat_schedule
from billwatch.jobs.models import JobRun, RunStatus
from tests.alerts.helpers import webhook_failures

NOW = datetime(2026, 7, 1, 15, 20, tzinfo=UTC)


async def runs(db: Database) -> dict[str, RunStatus]:
    async with db.sessionmaker() as session:
        return {f"{r.job}@{r.period}": r.status for r in (await session.scalars(select(JobRun)))}


class TestAuditCheckpoint:
    async def test_seals_once_per_hour(self, db: Database, alert_settings: Settings,
                                       tmp_path: Path) -> None:
        seals = tmp_path / "checkpoints"
        settings = alert_settings.model_copy(update={"audit_checkpoint_dir": seals})
        await webhook_failures(db, 3)  # three audit rows to seal
        first = await service.audit_checkpoint_job(db, settings, now=NOW)
        assert first.ran and first.result["sealed"] == 3
        assert [n for n in os.listdir(seals) if n.startswith("checkpoint-")]  # signed and written
        again = await service.audit_checkpoint_job(db, settings, now=NOW)
        assert not again.ran  # a second beat in the same hour does nothing
        assert await runs(db) == {"audit_checkpoint@2026-07-01T15": RunStatus.SUCCEEDED}


class TestWebhooksReconcile:
    async def test_reconciles_once_per_hour(self, db: Database, settings: Settings) -> None:
        first = await service.webhooks_reconcile_job(db, settings, now=datetime.now(UTC))
        assert first.ran and first.result["failed"] == 0
        assert not (await service.webhooks_reconcile_job(db, settings, now=datetime.now(UTC))).ran
        assert list((await runs(db)).values()) == [RunStatus.SUCCEEDED]


def test_the_beat_schedule() -> None:
    schedule = beat_schedule()
    assert schedule["daily-metrics"]["schedule"] == crontab(minute="0", hour="0")
    assert schedule["anomaly-checks"]["schedule"] == crontab(minute="0")
    assert schedule["audit-checkpoint"]["schedule"] == crontab(minute="15")
    assert schedule["webhooks-reconcile"]["schedule"] == crontab(minute="30")
    assert schedule["alerts-sweep"]["schedule"] == 60.0
    assert schedule["refunds-sweep"]["schedule"] == 60.0
