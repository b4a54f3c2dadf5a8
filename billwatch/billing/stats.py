"""Counts and sums over the billing tables, for the jobs and gauges that report on them.

The daily metrics job, the hourly anomaly checks and the live gauges ask these questions; the
answers are here, beside the tables, so a change to subscriptions or transactions is made in
one domain. Each function is one aggregate query (two where it says so), run in the caller's
session or connection. What "paying at an instant" means is defined in
:mod:`billwatch.jobs.daily_metrics` (definition version there); MRR per subscription is
:func:`billwatch.billing.revenue.subscription_mrr`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch.accounts.models import OwnerType
from billwatch.billing import revenue
from billwatch.billing.models import (
    ACTIVE_SUBSCRIPTION_STATUSES,
    Subscription,
    SubscriptionSource,
    Transaction,
    TransactionKind,
    TransactionStatus,
)
from billwatch.billing.models import NEVER_PAID_SUBSCRIPTION_STATUSES as NEVER_PAID
from billwatch.billing.models import NOT_STARTED_SUBSCRIPTION_STATUSES as NOT_STARTED
from billwatch.billing.models import STOPPED_SUBSCRIPTION_STATUSES as STOPPED
from billwatch.config import Plan

S = Subscription
T = Transaction

Reader = AsyncSession | AsyncConnection
"""Either works: jobs count in their unit of work, the gauges on a read-only connection."""


def stop_at() -> ColumnElement[datetime]:
    """When a subscription stopped paying (or null if it has not): ``ended_at``, else, once
    stopped, ``canceled_at`` or the time of the change that stopped it."""
    stopped = case((S.status.in_(STOPPED), func.coalesce(S.canceled_at, S.updated_at)), else_=None)
    return func.coalesce(S.ended_at, stopped)


def live_until() -> ColumnElement[datetime]:
    """Like :func:`stop_at`, and a free grant also ends at the end of its granted period."""
    granted_end = case((and_(S.source == SubscriptionSource.FREE_GRANT, S.status.not_in(STOPPED)),
                        S.current_period_end), else_=None)
    return func.coalesce(stop_at(), granted_end)


def _paying_at(moment: datetime, stop: ColumnElement[datetime]) -> ColumnElement[bool]:
    return and_(S.created_at <= moment, or_(stop.is_(None), stop > moment))


@dataclass(frozen=True, slots=True)
class RevenueWindow:
    """MRR and paying owners at a window's end, and what the owners paying at its start lost."""

    mrr_cents: int
    paying_customers: int
    start_mrr_cents: int
    start_customers: int
    customers_lost: int
    mrr_lost_cents: int


async def revenue_window(reader: Reader, plans: Sequence[Plan], *, start: datetime,
                         end: datetime) -> RevenueWindow:
    """MRR per owner at ``start`` and at ``end``, summed in one query (no owner row leaves SQL)."""
    stop = stop_at()
    at_start, at_end = revenue.adjustments_at(start), revenue.adjustments_at(end)
    price_start = revenue.subscription_mrr(plans, at_start)
    price_end = revenue.subscription_mrr(plans, at_end)
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
    row = (await reader.execute(select(
        func.coalesce(func.sum(end_mrr), 0),
        func.coalesce(func.sum(case((end_mrr > 0, 1), else_=0)), 0),
        func.coalesce(func.sum(start_mrr), 0),
        func.coalesce(func.sum(case((start_mrr > 0, 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(start_mrr > 0, end_mrr <= 0), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(start_mrr > 0, start_mrr > end_mrr),
                                     start_mrr - end_mrr), else_=0)), 0),
    ))).one()
    return RevenueWindow(*(int(value) for value in row))


@dataclass(frozen=True, slots=True)
class SubscriptionDay:
    """Live subscriptions at a day's end by owner type and plan, and the day's new and
    cancelled ones."""

    live_by_owner_plan: dict[str, dict[str, int]]
    new: int
    cancelled: int


async def subscription_day(reader: Reader, *, start: datetime, end: datetime) -> SubscriptionDay:
    """One scan, grouped by the (few) owner type and plan pairs."""
    until = live_until()
    live = and_(S.status.not_in(NOT_STARTED), S.created_at < end,
                or_(until.is_(None), until >= end))
    new = and_(S.created_at >= start, S.created_at < end, S.status.not_in(NOT_STARTED))
    cancelled = and_(S.canceled_at >= start, S.canceled_at < end)
    rows = await reader.execute(
        select(S.owner_type, S.plan_code, func.sum(case((live, 1), else_=0)),
               func.sum(case((new, 1), else_=0)), func.sum(case((cancelled, 1), else_=0)))
        .where(or_(live, new, cancelled))
        .group_by(S.owner_type, S.plan_code))
    by_plan: dict[str, dict[str, int]] = {}
    new_total = cancelled_total = 0
    for owner_type, plan_code, live_count, new_count, cancelled_count in rows:
        if live_count:
            by_plan.setdefault(str(owner_type.value), {})[plan_code] = int(live_count)
        new_total += int(new_count)
        cancelled_total += int(cancelled_count)
    return SubscriptionDay(by_plan, new_total, cancelled_total)


@dataclass(frozen=True, slots=True)
class MoneyDay:
    """Payments and refunds created in a period."""

    gross_revenue_cents: int
    payments_succeeded: int
    payments_failed: int
    refunds_count: int
    refunds_cents: int


async def money_day(reader: Reader, *, start: datetime, end: datetime) -> MoneyDay:
    """Payments and refunds created in ``[start, end)``: two indexed range scans, one per kind."""
    in_day = and_(T.created_at >= start, T.created_at < end)
    succeeded, failed, gross = (await reader.execute(select(
        func.coalesce(func.sum(case((T.status == TransactionStatus.SUCCEEDED, 1), else_=0)), 0),
        func.coalesce(func.sum(case((T.status == TransactionStatus.FAILED, 1), else_=0)), 0),
        func.coalesce(func.sum(case((T.status == TransactionStatus.SUCCEEDED, T.amount_cents),
                                    else_=0)), 0),
    ).where(T.kind == TransactionKind.PAYMENT, in_day))).one()
    refunds, refunded = (await reader.execute(select(
        func.count(), func.coalesce(func.sum(T.amount_cents), 0),
    ).where(T.kind == TransactionKind.REFUND, T.status != TransactionStatus.FAILED, in_day))).one()
    return MoneyDay(int(gross), int(succeeded), int(failed), int(refunds), int(refunded))


async def refunds_between(reader: Reader, *, start: datetime,
                          until: datetime) -> tuple[int, int]:
    """Refunds that did not fail created in ``[start, until]``: (count, amount in minor units)."""
    count, amount = (await reader.execute(
        select(func.count(), func.coalesce(func.sum(T.amount_cents), 0)).where(
            T.kind == TransactionKind.REFUND, T.status != TransactionStatus.FAILED,
            T.created_at >= start, T.created_at <= until))).one()
    return int(count), int(amount)


async def payment_outcomes(reader: Reader, *, start: datetime,
                           end: datetime) -> tuple[int, int]:
    """Settled payments created in ``[start, end)``: (failed, attempted), pending ones left out."""
    failed, total = (await reader.execute(select(
        func.coalesce(func.sum(case((T.status == TransactionStatus.FAILED, 1), else_=0)), 0),
        func.count(),
    ).where(T.kind == TransactionKind.PAYMENT,
            T.status.in_((TransactionStatus.SUCCEEDED, TransactionStatus.FAILED)),
            and_(T.created_at >= start, T.created_at < end)))).one()
    return int(failed), int(total)


async def earliest_activity(reader: Reader) -> list[datetime | None]:
    """The first subscription's and the first transaction's creation (two indexed minimums)."""
    return [await reader.scalar(select(func.min(S.created_at))),
            await reader.scalar(select(func.min(T.created_at)))]


async def active_by_owner_plan(reader: Reader) -> dict[tuple[OwnerType, str], int]:
    """Subscriptions in an active status, counted by owner type and plan code."""
    rows = await reader.execute(
        select(S.owner_type, S.plan_code, func.count())
        .where(S.status.in_(ACTIVE_SUBSCRIPTION_STATUSES))
        .group_by(S.owner_type, S.plan_code))
    return {(owner_type, plan_code): int(count) for owner_type, plan_code, count in rows}


async def proxy_managed_active(reader: Reader) -> int:
    """Active subscriptions set up and managed by a proxy (billing manager)."""
    count = await reader.scalar(select(func.count()).select_from(S).where(
        S.status.in_(ACTIVE_SUBSCRIPTION_STATUSES), S.managed_by_proxy_id.is_not(None)))
    return int(count or 0)
