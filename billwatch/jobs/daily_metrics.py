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
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch import money
from billwatch.billing import revenue
from billwatch.billing.models import NEVER_PAID_SUBSCRIPTION_STATUSES as NEVER_PAID
from billwatch.billing.models import NOT_STARTED_SUBSCRIPTION_STATUSES as NOT_STARTED
from billwatch.billing.models import STOPPED_SUBSCRIPTION_STATUSES as STOPPED
from billwatch.billing.models import (
    Subscription,
    SubscriptionSource,
    Transaction,
    TransactionKind,
    TransactionStatus,
)
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.jobs.models import DailyBillingMetrics

DEFINITION_VERSION = 2
"""2: MRR counts discounts and exemptions (version 1 counted list prices)."""
CHURN_WINDOW_DAYS = 30
WORK_MEM = "128MB"

S = Subscription
T = Transaction


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def stop_at() -> ColumnElement[datetime]:
    """When a subscription stopped paying (or null if it has not), per the module docstring."""
    stopped = case((S.status.in_(STOPPED), func.coalesce(S.canceled_at, S.updated_at)), else_=None)
    return func.coalesce(S.ended_at, stopped)


def live_until() -> ColumnElement[datetime]:
    """Like :func:`stop_at`, and a free grant also ends at the end of its granted period."""
    granted_end = case((and_(S.source == SubscriptionSource.FREE_GRANT, S.status.not_in(STOPPED)),
                        S.current_period_end), else_=None)
    return func.coalesce(stop_at(), granted_end)


def _paying_at(moment: datetime, stop: ColumnElement[datetime]) -> ColumnElement[bool]:
    return and_(S.created_at <= moment, or_(stop.is_(None), stop > moment))


async def owner_mrr_figures(session: AsyncSession, settings: Settings, *, start: datetime,
                            end: datetime) -> dict[str, Any]:
    """MRR and paying customers at ``end``, and the churn counts of the window start..end."""
    stop = stop_at()
    at_start, at_end = revenue.adjustments_at(start), revenue.adjustments_at(end)
    price_start = revenue.subscription_mrr(settings.plans, at_start)
    price_end = revenue.subscription_mrr(settings.plans, at_end)
    owners = (
        select(func.sum(case((_paying_at(start, stop), price_start), else_=0)).label("mrr_start"),
               func.sum(case((_paying_at(end, stop), price_end), else_=0)).label("mrr_end"))
        .select_from(S)
        .outerjoin(at_start, revenue.join_adjustments(at_start))
        .outerjoin(at_end, revenue.join_adjustments(at_end))
        .where(S.source == SubscriptionSource.STRIPE, S.status.not_in(NEVER_PAID),
               S.created_at <= end, or_(stop.is_(None), stop > start))
        .group_by(S.owner_type, S.owner_id)
        .subquery())
    start_mrr, end_mrr = owners.c.mrr_start, owners.c.mrr_end
    row = (await session.execute(select(
        func.coalesce(func.sum(end_mrr), 0),
        func.coalesce(func.sum(case((end_mrr > 0, 1), else_=0)), 0),
        func.coalesce(func.sum(start_mrr), 0),
        func.coalesce(func.sum(case((start_mrr > 0, 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(start_mrr > 0, end_mrr <= 0), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(start_mrr > 0, start_mrr > end_mrr),
                                     start_mrr - end_mrr), else_=0)), 0),
    ))).one()
    keys = ("mrr_cents", "paying_customers", "churn_mrr_start_cents", "churn_customers_start",
            "churn_customers_lost", "churn_mrr_lost_cents")
    return {key: int(value) for key, value in zip(keys, row, strict=True)}


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


async def churn_rates(session: AsyncSession, settings: Settings, *, end: datetime) -> dict[str, Any]:
    """The churn figures of the :data:`CHURN_WINDOW_DAYS` days ending at ``end``."""
    figures = await owner_mrr_figures(session, settings,
                                      start=end - timedelta(days=CHURN_WINDOW_DAYS), end=end)
    figures["customer_churn_rate"] = _rate(figures["churn_customers_lost"],
                                           figures["churn_customers_start"])
    figures["revenue_churn_rate"] = _rate(figures["churn_mrr_lost_cents"],
                                          figures["churn_mrr_start_cents"])
    return figures


async def subscription_counts(session: AsyncSession, *, start: datetime,
                              end: datetime) -> dict[str, Any]:
    """Live subscriptions at ``end`` by owner type and plan, and new and cancelled ones in the
    day: one scan, grouped by the (few) owner type and plan pairs."""
    until = live_until()
    live = and_(S.status.not_in(NOT_STARTED), S.created_at < end,
                or_(until.is_(None), until >= end))
    new = and_(S.created_at >= start, S.created_at < end, S.status.not_in(NOT_STARTED))
    cancelled = and_(S.canceled_at >= start, S.canceled_at < end)
    rows = await session.execute(
        select(S.owner_type, S.plan_code, func.sum(case((live, 1), else_=0)),
               func.sum(case((new, 1), else_=0)), func.sum(case((cancelled, 1), else_=0)))
        .where(or_(live, new, cancelled))
        .group_by(S.owner_type, S.plan_code))
    by_plan: dict[str, dict[str, int]] = {}
    totals = {"new_subscriptions": 0, "cancelled_subscriptions": 0}
    for owner_type, plan_code, live_count, new_count, cancelled_count in rows:
        if live_count:
            by_plan.setdefault(str(owner_type.value), {})[plan_code] = int(live_count)
        totals["new_subscriptions"] += int(new_count)
        totals["cancelled_subscriptions"] += int(cancelled_count)
    return {"active_by_owner_plan": by_plan,
            "active_subscriptions": sum(sum(plans.values()) for plans in by_plan.values()),
            **totals}


async def money_counts(session: AsyncSession, *, start: datetime, end: datetime) -> dict[str, Any]:
    """Payments and refunds created in ``[start, end)``; one indexed range scan per kind."""
    in_day = and_(T.created_at >= start, T.created_at < end)
    succeeded, failed, gross = (await session.execute(select(
        func.coalesce(func.sum(case((T.status == TransactionStatus.SUCCEEDED, 1), else_=0)), 0),
        func.coalesce(func.sum(case((T.status == TransactionStatus.FAILED, 1), else_=0)), 0),
        func.coalesce(func.sum(case((T.status == TransactionStatus.SUCCEEDED, T.amount_cents),
                                    else_=0)), 0),
    ).where(T.kind == TransactionKind.PAYMENT, in_day))).one()
    refunds, refunded = (await session.execute(select(
        func.count(), func.coalesce(func.sum(T.amount_cents), 0),
    ).where(T.kind == TransactionKind.REFUND, T.status != TransactionStatus.FAILED, in_day))).one()
    return {"gross_revenue_cents": int(gross), "payments_succeeded": int(succeeded),
            "payments_failed": int(failed), "refunds_count": int(refunds),
            "refunds_cents": int(refunded),
            "payment_success_rate": _rate(int(succeeded), int(succeeded) + int(failed))}


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
