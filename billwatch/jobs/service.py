"""The scheduled jobs as plain async functions; Celery tasks, the CLI and the embedded runner
all call these, so every way of running a job shares the run-once guarantee of
:func:`billwatch.jobs.runs.run_once`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.billing import stats
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.jobs import anomaly, daily_metrics, report
from billwatch.jobs.models import Installation, JobRun, RunStatus
from billwatch.jobs.runs import RunOutcome, run_claimed, run_once

DAILY_METRICS = "daily_metrics"
ANOMALY_CHECKS = "anomaly_checks"
AUDIT_CHECKPOINT = "audit_checkpoint"
AUDIT_SEAL = "audit_seal"
AUDIT_PARTITIONS = "audit_partitions"
WEBHOOKS_RECONCILE = "webhooks_reconcile"
WEBHOOKS_PRUNE = "webhooks_prune"
RECONCILE_LOOKBACK = timedelta(hours=3)
"""How far back the hourly reconcile asks Stripe (overlapping runs cost only duplicates)."""


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_period(hour_start: datetime) -> str:
    return hour_start.strftime("%Y-%m-%dT%H")


async def daily_metrics_job(db: Database, settings: Settings, day: date, *, force: bool = False,
                            alerts: bool = True, task_id: str | None = None) -> RunOutcome:
    """Compute and store ``day``'s metrics; with ``alerts``, raise churn and the daily report."""

    async def effect(session: AsyncSession) -> dict[str, Any]:
        figures = await daily_metrics.compute(session, settings, day)
        await daily_metrics.store(session, figures)
        churn_alert = False
        if alerts:
            churn_alert = await anomaly.raise_churn_if_high(session, settings, day=day,
                                                            figures=figures)
            await report.raise_daily_report(session, figures)
        return {"mrr_cents": figures["mrr_cents"], "paying_customers": figures["paying_customers"],
                "customer_churn_rate": figures["customer_churn_rate"], "churn_alert": churn_alert}

    return await run_once(db, job=DAILY_METRICS, period=day.isoformat(), effect=effect,
                          force=force, task_id=task_id)


def catch_up_days(settings: Settings, today: date, first_day: date | None = None) -> list[date]:
    """The complete days the daily job makes sure of, oldest first (so a report can compare),
    none before the installation's ``first_day``."""
    days = [today - timedelta(days=back) for back in range(settings.job_catch_up_days, 0, -1)]
    return [day for day in days if first_day is None or day >= first_day]


async def installation_first_day(db: Database, *, now: datetime | None = None) -> date:
    """The first day billwatch existed: its recorded set-up, or its first billing data if older.

    The set-up time is written by the migration that created ``installation`` (from the
    earliest job run or stored figure, else the migration's own time); a database that lost
    the row starts now. Older billing data (an import, a restored history) counts as existing.
    """
    moment = now or utcnow()
    async with db.unit_of_work() as session:
        insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql"
                  else sqlite.insert)
        await session.execute(insert(Installation).values(id=1, installed_at=moment)
                              .on_conflict_do_nothing(index_elements=["id"]))
        installed = await session.scalar(select(Installation.installed_at)
                                         .where(Installation.id == 1))
        earliest = [installed, *await stats.earliest_activity(session)]
    return min(found for found in earliest if found is not None).astimezone(UTC).date()


async def daily_catch_up(db: Database, settings: Settings, *, now: datetime | None = None,
                         task_id: str | None = None) -> dict[str, bool]:
    """The 00:00 job: every recent complete day that has no successful run gets one.

    Catching up (rather than computing "yesterday" only) means a beat that fired late, or a
    worker that was down at midnight, still produces each day once; a day before the
    installation existed is never reported.
    """
    today = (now or utcnow()).astimezone(UTC).date()
    days = catch_up_days(settings, today, await installation_first_day(db, now=now))
    done = await succeeded_periods(db, DAILY_METRICS, [d.isoformat() for d in days])
    ran: dict[str, bool] = {}
    for day in days:
        if day.isoformat() not in done:
            outcome = await daily_metrics_job(db, settings, day, task_id=task_id)
            ran[day.isoformat()] = outcome.ran
    return ran


HOURLY_CATCH_UP = 3
"""How many recent complete hours the hourly job makes sure of (a late beat skips none)."""


async def hourly_catch_up(db: Database, settings: Settings, *, now: datetime | None = None,
                          task_id: str | None = None) -> dict[str, bool]:
    """The hourly job: each recent complete hour without a successful run gets its checks."""
    current = hour_floor(now or utcnow())
    hours = [current - timedelta(hours=back) for back in range(HOURLY_CATCH_UP, 0, -1)]
    done = await succeeded_periods(db, ANOMALY_CHECKS, [hour_period(h) for h in hours])
    ran: dict[str, bool] = {}
    for hour_start in hours:
        if hour_period(hour_start) not in done:
            outcome = await anomaly_checks_job(db, settings, hour_start=hour_start, task_id=task_id)
            ran[hour_period(hour_start)] = outcome.ran
    return ran


async def anomaly_checks_job(db: Database, settings: Settings, *, hour_start: datetime,
                             task_id: str | None = None) -> RunOutcome:
    """The hourly checks for the hour starting at ``hour_start``, once per hour."""
    hour_end = hour_start + timedelta(hours=1)

    async def effect(session: AsyncSession) -> dict[str, Any]:
        return await anomaly.run_hourly_checks(session, settings, hour_end)

    return await run_once(db, job=ANOMALY_CHECKS, period=hour_period(hour_start), effect=effect,
                          task_id=task_id)


async def refunds_check(db: Database, settings: Settings, *,
                        now: datetime | None = None) -> dict[str, Any]:
    """The refunds-today threshold, run after a refund commits (no run-once row needed:
    its alert is keyed by the day and mails once)."""
    async with db.unit_of_work() as session:
        return await anomaly.check_refunds_today(session, settings, now or utcnow())


async def succeeded_periods(db: Database, job: str, periods: list[str]) -> set[str]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(select(JobRun.period).where(
            JobRun.job == job, JobRun.period.in_(periods), JobRun.status == RunStatus.SUCCEEDED))
        return set(rows.all())


async def run_due_schedule(db: Database, settings: Settings, *,
                           now: datetime | None = None) -> dict[str, Any]:
    """The embedded scheduler's tick: the daily and the hourly catch-up."""
    return {"daily": await daily_catch_up(db, settings, now=now),
            "hourly": await hourly_catch_up(db, settings, now=now)}


async def audit_checkpoint_job(db: Database, settings: Settings, *, now: datetime | None = None,
                               task_id: str | None = None) -> RunOutcome:
    """Seal the audit trail and write a signed checkpoint, once per hour (``billwatch audit
    checkpoint`` by the beat)."""
    from billwatch.audit.sealing import checkpoint

    async def work() -> dict[str, Any]:
        sealed = await checkpoint(db, settings)
        return {"sealed": sealed.sealed, "rows": sealed.checkpoint.row_count}

    return await run_claimed(db, job=AUDIT_CHECKPOINT, period=hour_period(hour_floor(now or utcnow())),
                             work=work, task_id=task_id)


async def audit_seal_due(db: Database, settings: Settings, *,
                         now: datetime | None = None) -> RunOutcome:
    """The frequent seal (embedded tick, beat): once per ``BILLWATCH_AUDIT_SEAL_INTERVAL_SECONDS`` slot.

    Without it an embedded deployment never seals, and an unsealed row deleted by hand leaves
    no trace. An idle slot writes no checkpoint; a failed one is retried by the next tick and
    never stops the tick's other work (it is logged and recorded as a failed run).
    """
    from billwatch.audit.sealing import checkpoint_new_rows, seal_period

    period = seal_period((now or utcnow()).astimezone(UTC), settings.audit_seal_interval_seconds)
    if period in await succeeded_periods(db, AUDIT_SEAL, [period]):
        return RunOutcome(ran=False)

    async def work() -> dict[str, Any]:
        sealed = await checkpoint_new_rows(db, settings)
        return {"sealed": 0 if sealed is None else sealed.sealed,
                "head_seq": None if sealed is None else sealed.checkpoint.last_seq}

    try:
        return await run_claimed(db, job=AUDIT_SEAL, period=period, work=work)
    except Exception:  # recorded as a failed run by run_claimed; the next tick retries
        return RunOutcome(ran=False)


async def audit_partitions_job(db: Database, settings: Settings, *, now: datetime | None = None,
                               task_id: str | None = None) -> RunOutcome:
    """Make the audit partitions of this month and the next ones, once a day (PostgreSQL)."""
    from billwatch.audit.partitions import ensure_partitions

    moment = (now or utcnow()).astimezone(UTC)

    async def work() -> dict[str, Any]:
        return {"created": await ensure_partitions(db, ahead=settings.audit_partitions_ahead,
                                                   now=moment)}

    return await run_claimed(db, job=AUDIT_PARTITIONS, period=moment.date().isoformat(),
                             work=work, task_id=task_id)


async def audit_partitions_due(db: Database, settings: Settings, *,
                               now: datetime | None = None) -> RunOutcome:
    """The embedded scheduler's daily partition run; a failure is retried by the next tick."""
    period = (now or utcnow()).astimezone(UTC).date().isoformat()
    if period in await succeeded_periods(db, AUDIT_PARTITIONS, [period]):
        return RunOutcome(ran=False)
    try:
        return await audit_partitions_job(db, settings, now=now)
    except Exception:  # recorded as a failed run by run_claimed; the next tick retries
        return RunOutcome(ran=False)


async def webhooks_reconcile_job(db: Database, settings: Settings, *,
                                 now: datetime | None = None,
                                 task_id: str | None = None) -> RunOutcome:
    """Process Stripe events of the last hours that no webhook delivered, once per hour."""
    from billwatch.payments.gateway import PaymentsGateway
    from billwatch.webhooks.service import reconcile

    hour = hour_floor(now or utcnow())

    async def work() -> dict[str, Any]:
        report = await reconcile(db, PaymentsGateway(settings), settings,
                                 since=hour - RECONCILE_LOOKBACK)
        return {"listed": report.listed, "missed": report.missed, "failed": report.failed}

    return await run_claimed(db, job=WEBHOOKS_RECONCILE, period=hour_period(hour), work=work,
                             task_id=task_id)


IDEMPOTENCY_PRUNE = "idempotency_prune"


async def idempotency_prune_job(db: Database, settings: Settings, *, now: datetime | None = None,
                                task_id: str | None = None) -> RunOutcome:
    """Delete client idempotency keys past their replay window, once per hour.

    Without it ``idempotency_keys`` grows with every keyed POST for the life of the database.
    The embedded tick calls this every poll, so an hour that already ran is answered by a read.
    """
    from billwatch.idempotency import prune

    moment = now or utcnow()
    period = hour_period(hour_floor(moment))
    if period in await succeeded_periods(db, IDEMPOTENCY_PRUNE, [period]):
        return RunOutcome(ran=False)

    async def work() -> dict[str, Any]:
        return {"pruned": await prune(db, now=moment)}

    return await run_claimed(db, job=IDEMPOTENCY_PRUNE, period=period, work=work, task_id=task_id)


async def webhooks_prune_job(db: Database, settings: Settings, *, now: datetime | None = None,
                             task_id: str | None = None) -> RunOutcome:
    """Prune stored Stripe payloads past their retention, once per day (a no-op once it ran)."""
    from billwatch.webhooks.retention import prune_payloads

    moment = now or utcnow()
    period = moment.astimezone(UTC).date().isoformat()
    if period in await succeeded_periods(db, WEBHOOKS_PRUNE, [period]):
        return RunOutcome(ran=False)

    async def work() -> dict[str, Any]:
        return {"pruned": await prune_payloads(db, settings, now=moment)}

    return await run_claimed(db, job=WEBHOOKS_PRUNE, period=period, work=work, task_id=task_id)
