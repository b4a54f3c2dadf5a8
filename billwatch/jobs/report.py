"""The daily report e-mail: the day's figures against the previous day's.

It travels as an ``info`` alert of kind ``daily_report`` keyed by the day, so it shares the
alert outbox (after commit, retried, redacted, mailed once) instead of a second mail path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts.explain import format_money
from billwatch.alerts.models import AlertKind
from billwatch.alerts.raising import raise_alert
from billwatch.jobs import daily_metrics

Formatter = Callable[[Any], str]


def _money(currency: str) -> Formatter:
    def fmt(cents: Any) -> str:
        return "-" if cents is None else format_money(cents, currency)
    return fmt


ACTIVITY = ("active_subscriptions", "new_subscriptions", "cancelled_subscriptions",
            "payments_succeeded", "payments_failed", "refunds_count", "gross_revenue_cents",
            "churn_customers_start")
"""Figures of which one is non-zero on any day that had billing data at all."""


def has_data(figures: dict[str, Any]) -> bool:
    return any(figures.get(name) for name in ACTIVITY)


def _count(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _change(kind: str, value: Any, previous: Any, fmt: Formatter) -> str:
    if value is None or previous is None:
        return "-"
    delta = value - previous
    if kind == "rate":
        return f"{delta * 100:+.2f} pp"
    return ("+" if delta > 0 else "") + fmt(delta) if delta else "0"


def report_rows(today: dict[str, Any], previous: dict[str, Any] | None) -> list[dict[str, str]]:
    money = _money(str(today.get("currency", "usd")))
    fields: list[tuple[str, str, str, Formatter]] = [
        ("Active subscriptions", "active_subscriptions", "count", _count),
        ("New subscriptions", "new_subscriptions", "count", _count),
        ("Cancelled subscriptions", "cancelled_subscriptions", "count", _count),
        ("MRR", "mrr_cents", "money", money),
        ("Paying customers", "paying_customers", "count", _count),
        ("ARPU", "arpu_cents", "money", money),
        ("Gross revenue", "gross_revenue_cents", "money", money),
        ("Refunds", "refunds_count", "count", _count),
        ("Refunded amount", "refunds_cents", "money", money),
        ("Payment success rate", "payment_success_rate", "rate", _percent),
        ("Customer churn (30 d)", "customer_churn_rate", "rate", _percent),
        ("Revenue churn (30 d)", "revenue_churn_rate", "rate", _percent),
    ]
    rows = []
    for label, key, kind, fmt in fields:
        value, before = today.get(key), (previous or {}).get(key)
        rows.append({"label": label, "value": fmt(value), "previous": fmt(before),
                     "change": _change(kind, value, before, fmt)})
    return rows


def _columns(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


async def raise_daily_report(session: AsyncSession, figures: dict[str, Any]) -> None:
    """Add the report of ``figures["day"]`` (against the stored previous day) to the session."""
    day = figures["day"]
    previous = _columns(await daily_metrics.load(session, day - timedelta(days=1)))
    money = _money(str(figures.get("currency", "usd")))
    empty = not has_data(figures)
    report = {"day": day.isoformat(),
              "previous_day": (day - timedelta(days=1)).isoformat() if previous else None,
              "definition_version": figures["definition_version"],
              "churn_window_days": figures["churn_window_days"],
              "empty": empty,
              "rows": [] if empty else report_rows(figures, previous)}
    subject = (f"{day.isoformat()}: no billing data (no subscriptions, payments or refunds)"
               if empty else
               f"{day.isoformat()}: MRR {money(figures['mrr_cents'])}, "
               f"{figures['paying_customers']} paying customers, "
               f"churn {_percent(figures['customer_churn_rate'])}")
    raise_alert(session, AlertKind.DAILY_REPORT, dedup_key=f"daily_report:{day.isoformat()}",
                subject=subject, payload={"day": day.isoformat(), "report": report})
