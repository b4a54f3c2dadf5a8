"""Threshold and anomaly checks: refunds today, monthly churn, the payment failure rate.

Each check queries in the caller's session and raises its alert there (committed with the
job's run). The alerts' dedup keys carry their period (a day, an hour) and their kinds mail
once per key, so a check re-run by the hour, by a refund or by a second beat mails once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts.models import AlertKind
from billwatch.alerts.raising import raise_alert
from billwatch.billing import stats
from billwatch.config import Settings
from billwatch.jobs import daily_metrics


def start_of_day(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(UTC).date(), time.min, tzinfo=UTC)


async def check_refunds_today(session: AsyncSession, settings: Settings,
                              now: datetime) -> dict[str, Any]:
    """More than ``alert_refunds_per_day`` refunds since 00:00 UTC raises ``refunds_high``."""
    day = start_of_day(now)
    count, amount = await stats.refunds_between(session, start=day, until=now)
    figures: dict[str, Any] = {"refunds_today": count, "refunded_cents": amount,
               "threshold": settings.alert_refunds_per_day, "day": day.date().isoformat()}
    if figures["refunds_today"] > settings.alert_refunds_per_day:
        raise_alert(session, AlertKind.REFUNDS_HIGH,
                    dedup_key=f"refunds_high:{figures['day']}",
                    subject=(f"{count} refunds on {figures['day']} "
                             f"(threshold {settings.alert_refunds_per_day})"),
                    payload=figures)
    return figures


async def raise_churn_if_high(session: AsyncSession, settings: Settings, *, day: date,
                              figures: dict[str, Any]) -> bool:
    """``churn_high`` for ``day`` when the 30-day customer churn is above the threshold."""
    rate = figures.get("customer_churn_rate")
    if rate is None or rate <= settings.alert_churn_rate:
        return False
    raise_alert(session, AlertKind.CHURN_HIGH, dedup_key=f"churn_high:{day.isoformat()}",
                subject=(f"customer churn {rate * 100:.2f} % over 30 days to {day.isoformat()} "
                         f"(threshold {settings.alert_churn_rate * 100:.2f} %)"),
                payload={"day": day.isoformat(), "customer_churn_rate": round(rate, 6),
                         "customers_at_start": figures.get("churn_customers_start"),
                         "customers_lost": figures.get("churn_customers_lost"),
                         "revenue_churn_rate": figures.get("revenue_churn_rate"),
                         "threshold": settings.alert_churn_rate})
    return True


async def check_churn(session: AsyncSession, settings: Settings, now: datetime) -> dict[str, Any]:
    """Churn over the 30 days ending ``now``; alerts at most once per day."""
    figures = await daily_metrics.churn_rates(session, settings, end=now)
    await raise_churn_if_high(session, settings, day=now.astimezone(UTC).date(), figures=figures)
    return {"customer_churn_rate": figures["customer_churn_rate"],
            "churn_customers_start": figures["churn_customers_start"]}


async def check_payment_failure_rate(session: AsyncSession, settings: Settings,
                                     hour_end: datetime) -> dict[str, Any]:
    """The failure rate of the hour ending ``hour_end`` against the 7 days before it.

    The baseline pools the 168 hours before the checked one (failed / attempted). The hour is
    "far above" it when it has at least ``alert_payment_failure_min_attempts`` attempts, its
    rate is at least ``alert_payment_failure_rate_factor`` times the baseline, and at least
    ``alert_payment_failure_rate_min_increase`` above it (so 1 % -> 3 % stays quiet).
    """
    hour_start = hour_end - timedelta(hours=1)
    failed, total = await stats.payment_outcomes(session, start=hour_start, end=hour_end)
    base_failed, base_total = await stats.payment_outcomes(
        session, start=hour_start - timedelta(days=7), end=hour_start)
    rate = failed / total if total else 0.0
    baseline = base_failed / base_total if base_total else 0.0
    figures = {"hour_start": hour_start.isoformat(), "attempts": total, "failed": failed,
               "failure_rate": round(rate, 6), "baseline_rate": round(baseline, 6),
               "baseline_attempts": base_total}
    if (total >= settings.alert_payment_failure_min_attempts
            and rate >= baseline * settings.alert_payment_failure_rate_factor
            and rate - baseline >= settings.alert_payment_failure_rate_min_increase):
        hour = hour_start.strftime("%Y-%m-%dT%H")
        raise_alert(session, AlertKind.PAYMENT_FAILURE_RATE,
                    dedup_key=f"payment_failure_rate:{hour}",
                    subject=(f"{rate * 100:.1f} % of {total} payments failed in the hour from "
                             f"{hour}:00 UTC (7-day baseline {baseline * 100:.1f} %)"),
                    payload=figures)
    return figures


async def run_hourly_checks(session: AsyncSession, settings: Settings,
                            hour_end: datetime) -> dict[str, Any]:
    """Every hourly check, for the hour ending at ``hour_end``."""
    last_instant = hour_end - timedelta(microseconds=1)  # 00:00 checks the day that just ended
    return {"refunds": await check_refunds_today(session, settings, last_instant),
            "churn": await check_churn(session, settings, hour_end),
            "payment_failure_rate": await check_payment_failure_rate(session, settings, hour_end)}
