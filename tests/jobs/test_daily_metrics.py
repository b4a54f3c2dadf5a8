"""Daily metrics against the hand-computed figures of a crafted month, on both databases."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import AlertKind
from billwatch.billing.models import TransactionKind, TransactionStatus
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import daily_metrics, service
from billwatch.jobs.models import DailyBillingMetrics, JobRun, RunStatus
from tests.alerts.helpers import alerts
from tests.alerts.mailbox import Mailbox
from tests.jobs.month import DAY, EXPECTED, june, seed_month, transaction


async def stored(db: Database) -> DailyBillingMetrics:
    async with db.sessionmaker() as session:
        row = await daily_metrics.load(session, DAY)
        assert row is not None
        return row


class TestFigures:
    async def test_the_crafted_month(self, db: Database, alert_settings: Settings) -> None:
        await seed_month(db)
        outcome = await service.daily_metrics_job(db, alert_settings, DAY, alerts=False)
        assert outcome.ran
        row = await stored(db)
        for name, expected in EXPECTED.items():
            value = getattr(row, name)
            if isinstance(expected, float):
                assert value == pytest.approx(expected), name
            else:
                assert value == expected, name

    async def test_an_empty_day_has_zeros_and_no_rates(self, db: Database,
                                                       alert_settings: Settings) -> None:
        await service.daily_metrics_job(db, alert_settings, DAY, alerts=False)
        row = await stored(db)
        assert (row.mrr_cents, row.paying_customers, row.active_subscriptions) == (0, 0, 0)
        assert row.arpu_cents is None and row.customer_churn_rate is None
        assert row.payment_success_rate is None and row.revenue_churn_rate is None


class TestRerun:
    async def test_rerunning_a_day_replaces_its_row(self, db: Database,
                                                    alert_settings: Settings) -> None:
        await seed_month(db)
        await service.daily_metrics_job(db, alert_settings, DAY, alerts=False)
        async with db.unit_of_work() as session:
            session.add(transaction(TransactionKind.PAYMENT, TransactionStatus.SUCCEEDED, 600,
                                    june(30, 16)))
        again = await service.daily_metrics_job(db, alert_settings, DAY, alerts=False)
        assert not again.ran  # the scheduled path runs a period once
        assert (await stored(db)).gross_revenue_cents == 14400
        forced = await service.daily_metrics_job(db, alert_settings, DAY, force=True, alerts=False)
        assert forced.ran
        assert (await stored(db)).gross_revenue_cents == 15000
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(DailyBillingMetrics)) == 1
            run = (await session.scalars(select(JobRun))).one()
        assert run.status is RunStatus.SUCCEEDED and run.attempts == 2
        assert run.period == DAY.isoformat() and run.result["mrr_cents"] == 21150


class TestAlertsAndReport:
    async def test_high_churn_alerts_and_the_report_compares_days(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await seed_month(db)
        await service.daily_metrics_job(db, alert_settings, DAY - timedelta(days=1), alerts=False)
        await service.daily_metrics_job(db, alert_settings, DAY)
        [churn] = await alerts(db, kind=AlertKind.CHURN_HIGH)
        assert churn.dedup_key == f"churn_high:{DAY.isoformat()}"
        assert churn.payload["customers_lost"] == 3
        await deliver_due(db, alert_settings)
        [report] = mailbox.messages(lambda m: m.message["X-Billwatch-Alert-Kind"] == "daily_report")
        assert report.message["X-Billwatch-Severity"] == "info"
        assert DAY.isoformat() in report.subject and "211.50 USD" in report.subject
        assert "compared with 2026-06-29" in report.text
        assert "Gross revenue" in report.html and "144.00 USD" in report.text
        assert "+119.00 USD" in report.text  # 144.00 on the 30th against 25.00 on the 29th
        assert mailbox.messages(lambda m: "churn" in m.subject.lower())


class TestRunOnce:
    async def test_two_concurrent_runs_of_a_period_apply_the_effect_once(
            self, db: Database, database_url: str, alert_settings: Settings) -> None:
        import asyncio

        await seed_month(db)
        second = Database(database_url)  # another process's connection pool
        try:
            outcomes = await asyncio.gather(
                service.daily_metrics_job(db, alert_settings, DAY, task_id="beat-1"),
                service.daily_metrics_job(second, alert_settings, DAY, task_id="beat-2"))
        finally:
            await second.dispose()
        assert sorted(o.ran for o in outcomes) == [False, True]
        assert len(await alerts(db, kind=AlertKind.DAILY_REPORT)) == 1
        assert len(await alerts(db, kind=AlertKind.CHURN_HIGH)) == 1

    async def test_a_failed_run_is_recorded_and_taken_over(self, db: Database,
                                                           alert_settings: Settings) -> None:
        from billwatch.jobs.runs import run_once

        async def broken(_session: object) -> dict[str, object]:
            raise RuntimeError(f"boom for card 4242424242424242 {uuid.uuid4()}")

        with pytest.raises(RuntimeError):
            await run_once(db, job="demo", period="p1", effect=broken)
        async with db.sessionmaker() as session:
            run = (await session.scalars(select(JobRun))).one()
        assert run.status is RunStatus.FAILED and "4242424242424242" not in (run.error or "")

        async def works(_session: object) -> dict[str, object]:
            return {"ok": True}

        outcome = await run_once(db, job="demo", period="p1", effect=works)
        assert outcome.ran and outcome.result == {"ok": True}
        async with db.sessionmaker() as session:
            run = (await session.scalars(select(JobRun).execution_options(
                populate_existing=True))).one()
        assert run.status is RunStatus.SUCCEEDED and run.attempts == 2 and run.error is None
