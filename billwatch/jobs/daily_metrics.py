"""Daily billing metrics, computed with SQL aggregates (no row ever crosses into Python).

Definitions (version :data:`DEFINITION_VERSION`; the README repeats them):

*Day D* is ``[D 00:00, D+1 00:00)`` UTC; "at the end of D" means the instant ``D+1 00:00``.

*Who was paying at an instant T* is reconstructed from the subscription rows, which keep no
status history: a subscription pays at T when

- its source is ``stripe`` (free grants never pay) and its plan's monthly price is > 0;
- its current status is not ``trialing``, ``incomplete`` or ``incomplete_expired`` (it never
  paid, or its trial is still running, so it did not pay at any earlier T either);
- ``created_at <= T`` and T is before its *stop*: ``ended_at``, or, when that is empty and
  the status is ``canceled``, ``unpaid``, ``paused`` or ``incomplete_expired``,
  ``canceled_at`` (else ``updated_at``, the time of the change that stopped it).

So a subscription that trialed before it paid counts from ``created_at``, and a plan change
made in place is seen at its current price for the whole past: both are limits of a table
without history, accepted until subscriptions keep one (a new definition version).

*MRR* at T: the sum, over subscriptions paying at T (``active`` or ``past_due`` now; trials
and free grants out), of what each is charged per month at T: the plan's amount less the
discount override in effect at T, yearly plans / 12, rounded half up (:mod:`billwatch.money`,
:mod:`billwatch.billing.revenue`, shared with the live gauge); a subscription whose collection
an exemption pauses at T counts zero; prices exclude tax. *Paying customer*: an owner (patient
or organization) with MRR > 0. *ARPU* = MRR / paying customers, rounded half up.

*Churn* uses the 30 days ending at the end of D rather than the calendar month: the alert
threshold is monthly, and a trailing window gives a comparable monthly figure every day
instead of one per month (or a partial month that reads low early on).
*Customer churn* = customers paying at the window start who pay nothing at its end / customers
paying at the start (owners who joined and left inside the window are in neither count).
*Revenue churn* = MRR lost from owners paying at the start (all of it for churned owners, the
drop for downgraded ones; expansion is not netted) / MRR at the start.

*New*: subscriptions created during D that got past ``incomplete``. *Cancelled*: subscriptions
whose ``canceled_at`` falls in D. *Active subscriptions* (by owner type and plan): every live
subscription at the end of D, trials and free grants included. *Gross revenue*: succeeded
payments created during D. *Refunds*: refunds created during D that did not fail (count and
amount). *Payment success rate*: succeeded / (succeeded + failed) payments created during D.

The queries over the billing tables are :mod:`billwatch.billing.stats`'s; this module turns
their answers into the row of ``daily_billing_metrics`` it owns.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch import money
from billwatch.billing import stats
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.jobs.models import DailyBillingMetrics

DEFINITION_VERSION = 2
"""2: MRR counts discounts and exemptions (version 1 counted list prices)."""
CHURN_WINDOW_DAYS = 30
WORK_MEM = "128MB"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


async def churn_rates(session: AsyncSession, settings: Settings, *, end: datetime) -> dict[str, Any]:
    """MRR and paying customers at ``end``, and the churn of the :data:`CHURN_WINDOW_DAYS` days
    ending there."""
    window = await stats.revenue_window(session, settings.plans,
                                        start=end - timedelta(days=CHURN_WINDOW_DAYS), end=end)
    return {"mrr_cents": window.mrr_cents, "paying_customers": window.paying_customers,
            "churn_mrr_start_cents": window.start_mrr_cents,
            "churn_customers_start": window.start_customers,
            "churn_customers_lost": window.customers_lost,
            "churn_mrr_lost_cents": window.mrr_lost_cents,
            "customer_churn_rate": _rate(window.customers_lost, window.start_customers),
            "revenue_churn_rate": _rate(window.mrr_lost_cents, window.start_mrr_cents)}


async def subscription_counts(session: AsyncSession, *, start: datetime,
                              end: datetime) -> dict[str, Any]:
    """Live subscriptions at ``end`` by owner type and plan, and new and cancelled ones in the day."""
    day = await stats.subscription_day(session, start=start, end=end)
    return {"active_by_owner_plan": day.live_by_owner_plan,
            "active_subscriptions": sum(sum(plans.values())
                                        for plans in day.live_by_owner_plan.values()),
            "new_subscriptions": day.new, "cancelled_subscriptions": day.cancelled}


async def money_counts(session: AsyncSession, *, start: datetime, end: datetime) -> dict[str, Any]:
    """Payments and refunds created in ``[start, end)``."""
    day = await stats.money_day(session, start=start, end=end)
    return {"gross_revenue_cents": day.gross_revenue_cents,
            "payments_succeeded": day.payments_succeeded, "payments_failed": day.payments_failed,
            "refunds_count": day.refunds_count, "refunds_cents": day.refunds_cents,
            "payment_success_rate": _rate(day.payments_succeeded,
                                          day.payments_succeeded + day.payments_failed)}


async def compute(session: AsyncSession, settings: Settings, day: date) -> dict[str, Any]:
    """Every figure of ``day`` as a dict of :class:`DailyBillingMetrics` column values."""
    start, end = day_bounds(day)
    if session.get_bind().dialect.name == "postgresql":
        # the per-owner aggregate hashes every owner; in memory it is several times faster
        # than the default work_mem's on-disk sort (only for this transaction)
        await session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    figures: dict[str, Any] = {"day": day, "definition_version": DEFINITION_VERSION,
                               "computed_at": utcnow(), "churn_window_days": CHURN_WINDOW_DAYS,
                               "currency": settings.plans[0].currency if settings.plans else "usd"}
    figures.update(await churn_rates(session, settings, end=end))
    figures.update(await subscription_counts(session, start=start, end=end))
    figures.update(await money_counts(session, start=start, end=end))
    figures["arpu_cents"] = money.average_cents(figures["mrr_cents"], figures["paying_customers"])
    return figures


async def store(session: AsyncSession, figures: dict[str, Any]) -> None:
    """Insert or replace the row of ``figures["day"]`` (re-running a day overwrites it)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(DailyBillingMetrics).values(**figures)
    await session.execute(statement.on_conflict_do_update(
        index_elements=["day"], set_={key: value for key, value in figures.items() if key != "day"}))


async def load(session: AsyncSession, day: date) -> DailyBillingMetrics | None:
    return await session.get(DailyBillingMetrics, day, populate_existing=True)


async def newest_figures(conn: AsyncConnection) -> tuple[float | None, float | None, int | None] | None:
    """The newest day's customer churn, revenue churn and gross revenue; None before the first
    run. A database not yet migrated to the jobs schema raises ``DBAPIError``."""
    row = (await conn.execute(
        select(DailyBillingMetrics.customer_churn_rate, DailyBillingMetrics.revenue_churn_rate,
               DailyBillingMetrics.gross_revenue_cents)
        .order_by(DailyBillingMetrics.day.desc()).limit(1))).first()
    return None if row is None else (row[0], row[1], row[2])
