"""What one subscription adds to MRR at an instant, as one SQL expression.

MRR counts what the owner is charged, normalised to a month (as Stripe and ChartMogul define
it): the plan's amount, less the discount in effect at that instant, divided by the months one
invoice pays for, rounded by :mod:`billwatch.money`'s one rule. A subscription whose collection
is paused by a payment exemption adds nothing. The live gauge (at now) and the daily job (at a
day's end and its churn window's start) both build their MRR from :func:`subscription_mrr`, so
the two agree by construction; :func:`mrr_by_owner_type` is the live figure the gauge and the
demo's summary read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from billwatch import money
from billwatch.accounts.models import OwnerType
from billwatch.billing.models import (
    ADJUSTMENT_KINDS,
    REVENUE_SUBSCRIPTION_STATUSES,
    BillingOverride,
    OverrideKind,
    Subscription,
    SubscriptionSource,
)
from billwatch.config import Plan


def adjustments_at(moment: datetime) -> Subquery:
    """The discount and exemption in effect at ``moment``, one row per subscription.

    In effect = applied at Stripe at or before ``moment`` and not yet removed (revoked or
    expired) by then; one live override per owner and kind keeps these windows apart.
    """
    o = aliased(BillingOverride)
    in_effect = and_(o.kind.in_(ADJUSTMENT_KINDS), o.applied_at.is_not(None),
                     o.applied_at <= moment,
                     or_(o.revoked_at.is_(None), o.revoked_at > moment),
                     or_(o.expired_at.is_(None), o.expired_at > moment))
    is_discount = o.kind == OverrideKind.DISCOUNT
    return (select(o.subscription_id.label("subscription_id"),
                   func.max(case((is_discount, o.percent_off))).label("percent_off"),
                   func.max(case((is_discount, o.amount_off_cents))).label("amount_off_cents"),
                   func.max(case((o.kind == OverrideKind.PAYMENT_EXEMPTION, 1), else_=0))
                   .label("exempt"))
            .where(in_effect).group_by(o.subscription_id).subquery())


def join_adjustments(adjustments: Subquery) -> Any:
    """The ON clause joining :func:`adjustments_at` to ``subscriptions`` (outer join)."""
    return adjustments.c.subscription_id == Subscription.id


def subscription_mrr(plans: Sequence[Plan], adjustments: Subquery) -> ColumnElement[int]:
    """The monthly revenue of the ``subscriptions`` row, given its outer-joined adjustments."""
    if not plans:
        return literal(0)
    amount = case({p.code: p.amount_cents for p in plans}, value=Subscription.plan_code, else_=0)
    months = case({p.code: p.months_per_invoice for p in plans},
                  value=Subscription.plan_code, else_=1)
    off = money.sql_discount_cents(amount, adjustments.c.percent_off,
                                   adjustments.c.amount_off_cents)
    monthly = money.sql_divide_half_up(amount - off, months)
    return case((adjustments.c.exempt == 1, literal(0)), else_=monthly)


def _per_owner_mrr(plans: Sequence[Plan], moment: datetime) -> Select[Any]:
    adjustments = adjustments_at(moment)
    price: Any = subscription_mrr(plans, adjustments)
    return (select(Subscription.owner_type.label("owner_type"), func.sum(price).label("mrr"))
            .select_from(Subscription)
            .outerjoin(adjustments, join_adjustments(adjustments))
            .where(Subscription.status.in_(REVENUE_SUBSCRIPTION_STATUSES),
                   Subscription.source == SubscriptionSource.STRIPE)
            .group_by(Subscription.owner_type, Subscription.owner_id))


async def mrr_by_owner_type(conn: AsyncConnection, plans: Sequence[Plan],
                            moment: datetime) -> dict[OwnerType, tuple[int, int]]:
    """MRR in minor units and paying customers (owners whose MRR is above zero) per owner type
    at ``moment``; every owner type is present."""
    per_owner = _per_owner_mrr(plans, moment).subquery()
    rows = await conn.execute(
        select(per_owner.c.owner_type, func.sum(per_owner.c.mrr), func.count())
        .where(per_owner.c.mrr > 0).group_by(per_owner.c.owner_type))
    result = dict.fromkeys(OwnerType, (0, 0))
    for owner_type, total, owners in rows:
        result[OwnerType(owner_type)] = (int(total or 0), int(owners))
    return result
