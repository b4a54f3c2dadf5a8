"""Billing overrides: free grants, discounts and payment exemptions decided by an admin."""

from __future__ import annotations

import calendar
import uuid
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.billing.models import (
    BillingOverride,
    OverrideKind,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.billing.subscriptions import ensure_no_live_subscription, require_plan
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.errors import Conflict, NotFound, Unprocessable


def add_months(moment: datetime, months: int) -> datetime:
    """The same day ``months`` later, clamped to the month's last day (Jan 31 + 1 = Feb 28)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


async def get_override(session: AsyncSession, override_id: uuid.UUID) -> BillingOverride:
    override = await session.get(BillingOverride, override_id)
    if override is None:
        raise NotFound(f"override {override_id} not found", code="override_not_found")
    return override


async def grant_free_subscription(session: AsyncSession, settings: Settings, *, actor: Actor,
                                  owner: OwnerRef, plan_code: str, months: int | None,
                                  reason: str) -> BillingOverride:
    """Give ``owner`` the plan for free for ``months`` (or with no end); no money moves."""
    await accounts.owner_display(session, owner)
    plan = require_plan(settings, plan_code)
    await ensure_no_live_subscription(session, owner)
    now = utcnow()
    ends_at = add_months(now, months) if months is not None else None
    subscription = Subscription(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, plan_code=plan.code,
        status=SubscriptionStatus.ACTIVE, source=SubscriptionSource.FREE_GRANT,
        current_period_start=now, current_period_end=ends_at)
    override = BillingOverride(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
        kind=OverrideKind.FREE_SUBSCRIPTION, plan_code=plan.code, starts_at=now, ends_at=ends_at,
        reason=reason, subscription_id=subscription.id, created_by_user_id=actor.user_id)
    try:
        async with session.begin_nested():  # the one-live-subscription index settles a race
            session.add(subscription)
    except IntegrityError as error:
        raise Conflict("owner already has a live subscription; cancel it first",
                       code="subscription_exists") from error
    session.add(override)
    await session.flush()
    recorder.record(session, AuditEvent.FREE_SUBSCRIPTION_GRANTED, actor=actor, owner=owner,
                    resource=Resource("billing_override", override.id),
                    data={"plan": plan.code, "months": months, "reason": reason,
                          "subscription_id": str(subscription.id),
                          "ends_at": ends_at.isoformat() if ends_at else None})
    return override


async def create_override(session: AsyncSession, *, actor: Actor, owner: OwnerRef,
                          kind: OverrideKind, reason: str, percent_off: int | None = None,
                          plan_code: str | None = None,
                          ends_at: datetime | None = None) -> BillingOverride:
    """A discount or payment exemption; free subscriptions go through the free-grant route."""
    await accounts.owner_display(session, owner)
    if kind is OverrideKind.FREE_SUBSCRIPTION:
        raise Unprocessable("grant free subscriptions through /admin/free-grants",
                            code="use_free_grant")
    if kind is OverrideKind.DISCOUNT and (percent_off is None or not 1 <= percent_off <= 100):
        raise Unprocessable("a discount needs percent_off between 1 and 100",
                            code="percent_off_required")
    if kind is not OverrideKind.DISCOUNT and percent_off is not None:
        raise Unprocessable("percent_off only applies to discounts", code="percent_off_not_allowed")
    now = utcnow()
    if ends_at is not None and ends_at <= now:
        raise Unprocessable("ends_at must be in the future", code="ends_at_in_past")
    override = BillingOverride(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, kind=kind,
        plan_code=plan_code, percent_off=percent_off, starts_at=now, ends_at=ends_at,
        reason=reason, created_by_user_id=actor.user_id)
    session.add(override)
    await session.flush()
    recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=actor, owner=owner,
                    resource=Resource("billing_override", override.id),
                    data={"kind": kind.value, "percent_off": percent_off, "plan": plan_code,
                          "reason": reason, "ends_at": ends_at.isoformat() if ends_at else None})
    return override


async def revoke_override(session: AsyncSession, *, actor: Actor, override_id: uuid.UUID,
                          reason: str) -> BillingOverride:
    """End an override now; revoking a free grant ends its free subscription too."""
    override = await get_override(session, override_id)
    if override.revoked_at is not None:
        raise Conflict("override is already revoked", code="already_revoked")
    now = utcnow()
    override.revoked_at = now
    override.revoked_by_user_id = actor.user_id
    override.revoke_reason = reason
    ended_subscription = None
    if override.subscription_id is not None:
        subscription = await session.get(Subscription, override.subscription_id)
        if subscription is not None and subscription.status is not SubscriptionStatus.CANCELED:
            subscription.status = SubscriptionStatus.CANCELED
            subscription.canceled_at = subscription.ended_at = now
            ended_subscription = str(subscription.id)
    recorder.record(session, AuditEvent.OVERRIDE_REVOKED, actor=actor,
                    owner=OwnerRef(override.owner_type, override.owner_id),
                    resource=Resource("billing_override", override.id),
                    data={"kind": override.kind.value, "reason": reason,
                          "ended_subscription_id": ended_subscription})
    return override
