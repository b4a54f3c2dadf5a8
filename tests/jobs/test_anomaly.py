"""Hourly checks and the embedded schedule: each alert once per period, each period once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from billwatch.accounts.actor import SystemActor
from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import AlertKind, AlertStatus
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.billing.models import TransactionKind, TransactionStatus
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import service
from billwatch.jobs.embedded import EmbeddedRunner
from billwatch.jobs.models import JobRun, RunStatus
from tests.alerts.helpers import alerts
from tests.alerts.mailbox import Mailbox, wait_until_async
from tests.jobs.month import seed_month, transaction
from tests.jobs.reports import installed

NOW = datetime(2026, 7, 1, 15, 30, tzinfo=UTC)
HOUR = datetime(2026, 7, 1, 14, tzinfo=UTC)  # the hour checked at 15:00


async def add(db: Database, kind: TransactionKind, status: TransactionStatus, times: list[datetime],
              amount: int = 1500) -> None:
    async with db.unit_of_work() as session:
        session.add_all(transaction(kind, status, amount, at) for at in times)


class TestRefundsToday:
    async def test_more_than_five_refunds_alert_once(self, db: Database, alert_settings: Settings,
                                                     mailbox: Mailbox) -> None:
        today = [NOW - timedelta(minutes=10 * n) for n in range(5)]
        await add(db, TransactionKind.REFUND, TransactionStatus.SUCCEEDED, today)
        await add(db, TransactionKind.REFUND, TransactionStatus.SUCCEEDED, [NOW - timedelta(days=1)])
        await add(db, TransactionKind.REFUND, TransactionStatus.FAILED, [NOW])
        figures = await service.refunds_check(db, alert_settings, now=NOW)
        assert figures["refunds_today"] == 5 and await alerts(db) == []  # 5 is not above 5

        await add(db, TransactionKind.REFUND, TransactionStatus.SUCCEEDED, [NOW])
        await service.refunds_check(db, alert_settings, now=NOW)
        await service.refunds_check(db, alert_settings, now=NOW)  # the next refund re-checks
        await deliver_due(db, alert_settings, now=NOW + timedelta(minutes=1))
        assert [a.status for a in await alerts(db, kind=AlertKind.REFUNDS_HIGH)] == [
            AlertStatus.SENT, AlertStatus.SUPPRESSED]
        [mail] = mailbox.messages()
        assert "6 refunds on 2026-07-01" in mail.subject and "WARNING" in mail.subject

    async def test_a_committed_refund_asks_the_runner_for_the_check(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await add(db, TransactionKind.REFUND, TransactionStatus.SUCCEEDED,
                  [datetime.now(UTC)] * 6)
        runner = EmbeddedRunner(db, alert_settings.model_copy(update={"alert_poll_seconds": 60}))
        await runner.start()
        try:
            async with db.unit_of_work() as session:  # the sixth refund's audit row commits
                recorder.record(session, AuditEvent.REFUND_ISSUED, actor=SystemActor("cli"),
                                data={"amount_cents": 1500, "reason": "duplicate"})
            await mailbox.wait_for(1)
        finally:
            await runner.stop()
        assert [a.kind for a in await alerts(db)] == [AlertKind.REFUNDS_HIGH]


class TestPaymentFailureRate:
    async def baseline(self, db: Database) -> None:
        """100 payments over the previous week, 5 of them failed (a 5 % baseline)."""
        times = [HOUR - timedelta(hours=1 + n) for n in range(100)]
        await add(db, TransactionKind.PAYMENT, TransactionStatus.SUCCEEDED, times[5:])
        await add(db, TransactionKind.PAYMENT, TransactionStatus.FAILED, times[:5])

    async def test_far_above_the_baseline_alerts(self, db: Database,
                                                 alert_settings: Settings) -> None:
        await self.baseline(db)
        minutes = [HOUR + timedelta(minutes=n) for n in range(20)]
        await add(db, TransactionKind.PAYMENT, TransactionStatus.FAILED, minutes[:10])
        await add(db, TransactionKind.PAYMENT, TransactionStatus.SUCCEEDED, minutes[10:])
        outcome = await service.anomaly_checks_job(db, alert_settings, hour_start=HOUR)
        figures = outcome.result["payment_failure_rate"]
        assert (figures["attempts"], figures["failed"]) == (20, 10)
        assert figures["baseline_rate"] == 0.05 and figures["failure_rate"] == 0.5
        [alert] = await alerts(db, kind=AlertKind.PAYMENT_FAILURE_RATE)
        assert alert.dedup_key == "payment_failure_rate:2026-07-01T14"

    async def test_a_modest_rise_or_too_few_attempts_stay_quiet(
            self, db: Database, alert_settings: Settings) -> None:
        await self.baseline(db)
        minutes = [HOUR + timedelta(minutes=n) for n in range(20)]
        await add(db, TransactionKind.PAYMENT, TransactionStatus.FAILED, minutes[:2])  # 10 %
        await add(db, TransactionKind.PAYMENT, TransactionStatus.SUCCEEDED, minutes[2:])
        await add(db, TransactionKind.PAYMENT, TransactionStatus.FAILED,  # 5 of 5, next hour
                  [HOUR + timedelta(hours=1, minutes=n) for n in range(5)])
        await service.anomaly_checks_job(db, alert_settings, hour_start=HOUR)
        await service.anomaly_checks_job(db, alert_settings, hour_start=HOUR + timedelta(hours=1))
        assert await alerts(db, kind=AlertKind.PAYMENT_FAILURE_RATE) == []


class TestSchedule:
    async def test_each_period_runs_once_however_often_the_schedule_ticks(
            self, db: Database, alert_settings: Settings) -> None:
        await seed_month(db)  # high churn on 1 July 15:30 too
        first = await service.run_due_schedule(db, alert_settings, now=NOW)
        assert first["daily"] == {"2026-06-28": True, "2026-06-29": True, "2026-06-30": True}
        assert first["hourly"] == {"2026-07-01T12": True, "2026-07-01T13": True,
                                   "2026-07-01T14": True}
        assert await service.run_due_schedule(db, alert_settings, now=NOW) == {
            "daily": {}, "hourly": {}}
        async with db.sessionmaker() as session:
            runs = (await session.scalars(select(JobRun))).all()
        assert len(runs) == 6 and {r.status for r in runs} == {RunStatus.SUCCEEDED}
        assert len(await alerts(db, kind=AlertKind.DAILY_REPORT)) == 3
        churn = await alerts(db, kind=AlertKind.CHURN_HIGH)
        assert sorted(a.dedup_key for a in churn) == [
            "churn_high:2026-06-28", "churn_high:2026-06-29", "churn_high:2026-06-30",
            "churn_high:2026-07-01", "churn_high:2026-07-01", "churn_high:2026-07-01"]

    async def test_the_runner_runs_the_schedule(self, db: Database, alert_settings: Settings,
                                                mailbox: Mailbox) -> None:
        await installed(db, datetime.now(UTC) - timedelta(days=10))  # days to catch up exist
        runner = EmbeddedRunner(db, alert_settings, schedule=True)
        await runner.start()
        try:
            await wait_until_async(lambda: _runs(db), what="the catch-up runs")
            await mailbox.wait_for(alert_settings.job_catch_up_days)  # one report per day
        finally:
            await runner.stop()


async def _runs(db: Database) -> bool:
    async with db.sessionmaker() as session:
        return len((await session.scalars(select(JobRun))).all()) >= 6
