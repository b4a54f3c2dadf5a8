"""customer.subscription.created / updated / deleted: keep our subscription row in step, in order.

Stripe does not deliver in order, so every change is stamped with the ``created`` time of the
event that carried it (``Subscription.stripe_updated_at``). An event older than the stamp is
ignored; one with the same second re-reads the subscription through the gateway, because two
states from one second cannot be ordered by their timestamps. A deletion is final: it applies
whatever its time, and no later ``updated`` brings the subscription back.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import Role, User
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.billing import cancellations
from billwatch.billing.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    CancelMode,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.db import after_commit
from billwatch.errors import Unprocessable
from billwatch.runtime import runtime_of
from billwatch.webhooks import shapes
from billwatch.webhooks.handlers.common import (
    STRIPE,
    EventContext,
    Handled,
    locked_subscription,
    owner_for_customer,
    owner_of,
    plan_for_price,
    uuid_or_none,
)

DELETED = "customer.subscription.deleted"


def _status(sub: dict[str, Any]) -> SubscriptionStatus:
    try:
        return SubscriptionStatus(str(sub.get("status")))
    except ValueError as error:
        raise Unprocessable(f"subscription {sub.get('id')} has unknown status {sub.get('status')!r}",
                            code="unknown_status") from error


async def subscription_event(ctx: EventContext) -> Handled:
    """Create, update or end our subscription from a customer.subscription.* event."""
    sub = ctx.obj
    stripe_id = shapes.required_str(sub, "id")
    customer_id = shapes.ref(sub.get("customer"))
    refs = ctx.refs(customer_id=customer_id, subscription_id=stripe_id)
    row = await locked_subscription(ctx.session, stripe_id)
    if row is None:
        owner = await owner_for_customer(ctx.session, customer_id, shapes.metadata(sub))
        if owner is None:
            return Handled.ignored(f"no billwatch owner for Stripe customer {customer_id}", refs=refs)
        row, created = await create_subscription(ctx, sub, owner, stamp=ctx.created)
        if created:
            return Handled(owner=owner, refs=refs, data={"subscription_id": str(row.id)})
    deleted = ctx.type == DELETED
    if not deleted:
        if row.status is SubscriptionStatus.CANCELED and row.ended_at is not None:
            return Handled.ignored("subscription has ended; a deletion is final",
                                   refs=refs, owner=owner_of(row))
        if row.stripe_updated_at is not None and ctx.created < row.stripe_updated_at:
            return Handled.ignored("older than the state already applied", refs=refs,
                                   owner=owner_of(row))
        if row.stripe_updated_at is not None and ctx.created == row.stripe_updated_at:
            sub = ctx.subscription_from_stripe(stripe_id)  # same second: ask Stripe
    changes = await apply_state(ctx, row, sub)
    return Handled(owner=owner_of(row), refs=refs,
                   data={"subscription_id": str(row.id), "changed": sorted(changes)})


async def create_subscription(ctx: EventContext, sub: dict[str, Any], owner: OwnerRef, *,
                              stamp: datetime) -> tuple[Subscription, bool]:
    """Our row for a subscription first heard of now, audited as created (and ended, if so).

    Returns ``(row, True)``; or, when a concurrent event created it first, that row (locked)
    and False, for the caller to treat as existing.
    """
    plan = plan_for_price(ctx.settings, shapes.subscription_price_id(sub))
    meta = shapes.metadata(sub)
    start, end = shapes.subscription_period(sub)
    row = Subscription(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, plan_code=plan.code,
        status=_status(sub), source=SubscriptionSource.STRIPE,
        stripe_subscription_id=shapes.required_str(sub, "id"),
        stripe_customer_id=shapes.ref(sub.get("customer")),
        current_period_start=start, current_period_end=end,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        canceled_at=shapes.timestamp(sub.get("canceled_at")),
        ended_at=shapes.timestamp(sub.get("ended_at")), stripe_updated_at=stamp)
    await set_manager(ctx, row, meta)
    if row.status is SubscriptionStatus.CANCELED and row.ended_at is None:
        row.ended_at = row.canceled_at or ctx.created
    existing = await insert_subscription(ctx, row)
    if existing is not None:
        return existing, False
    record_created(ctx, row, data={"amount_cents": plan.amount_cents, "currency": plan.currency,
                                   "interval": plan.interval.value})
    if row.status is SubscriptionStatus.CANCELED:
        record_cancelled(ctx, row, mode="immediately", reason=_cancel_reason(sub))
    return row, True


async def insert_subscription(ctx: EventContext, row: Subscription) -> Subscription | None:
    """Insert ``row``; None on success, else the row a concurrent event inserted first.

    Two events of a new subscription (its own, an invoice's, a checkout's) may be handled at
    once; the unique Stripe id lets one insert win, and the other continues on the winner's row.
    """
    try:
        async with ctx.session.begin_nested():
            ctx.session.add(row)
    except IntegrityError:
        assert row.stripe_subscription_id is not None
        winner = await locked_subscription(ctx.session, row.stripe_subscription_id)
        if winner is not None:
            return winner
        live = await live_subscription_of(ctx.session, owner_of(row))
        if live is None:
            raise
        # The owner already has a live subscription: Stripe bills this one too, so it is kept,
        # flagged (outside the one-live-per-owner index) and alerted, for an admin to resolve.
        row.duplicate_of_id = live.id
        async with ctx.session.begin_nested():
            ctx.session.add(row)
        record_duplicate(ctx, row, live)
    return None


async def live_subscription_of(session: AsyncSession, owner: OwnerRef) -> Subscription | None:
    """The owner's one live, unflagged subscription, if any."""
    found = await session.scalars(select(Subscription).where(
        Subscription.owner_type == owner.type, Subscription.owner_id == owner.id,
        Subscription.duplicate_of_id.is_(None),
        Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES)))
    return found.first()


def record_duplicate(ctx: EventContext, row: Subscription, live: Subscription) -> None:
    """Audit the flag; the alert rule on this event raises the admin alert in this transaction."""
    _record(ctx, AuditEvent.SUBSCRIPTION_DUPLICATE_FLAGGED, row, {
        "plan": row.plan_code, "status": row.status.value, "duplicate_of_id": str(live.id),
        "duplicate_of_stripe_subscription_id": live.stripe_subscription_id,
        "duplicate_of_plan": live.plan_code})


def _record(ctx: EventContext, event: AuditEvent, row: Subscription, data: dict[str, Any]) -> None:
    """An audit row written in Stripe's name about ``row``: its owner, the row and its Stripe ids."""
    recorder.record(ctx.session, event, actor=STRIPE, owner=owner_of(row),
                    resource=Resource("subscription", row.id),
                    stripe=ctx.refs(customer_id=row.stripe_customer_id,
                                    subscription_id=row.stripe_subscription_id),
                    data=data)


def record_created(ctx: EventContext, row: Subscription, *, data: dict[str, Any]) -> None:
    _record(ctx, AuditEvent.SUBSCRIPTION_CREATED, row, {
        "plan": row.plan_code, "status": row.status.value,
        "current_period_end": _iso(row.current_period_end),
        "managed_by_proxy_id": _str(row.managed_by_proxy_id),
        "manager_assignment_id": _str(row.manager_assignment_id), **data})
    plan, owner_type = row.plan_code, row.owner_type.value
    metrics = runtime_of(ctx.session).metrics
    after_commit(ctx.session, lambda: metrics.subscription_created(owner_type, plan))


async def set_manager(ctx: EventContext, row: Subscription, meta: dict[str, str]) -> None:
    """Keep the proxy who checked out on the subscription (from our checkout's metadata)."""
    if row.managed_by_proxy_id is not None:
        return
    proxy_id = uuid_or_none(meta.get("billwatch_proxy_id"))
    if proxy_id is None:
        return
    proxy = await ctx.session.get(User, proxy_id)
    if proxy is None or proxy.role is not Role.PROXY:
        return  # metadata naming no proxy of ours is not trusted with the link
    row.managed_by_proxy_id = proxy_id
    row.manager_assignment_id = uuid_or_none(meta.get("billwatch_assignment_id"))


async def _adopt_cancellation(ctx: EventContext, row: Subscription, mode: CancelMode) -> bool:
    """A cancel we asked Stripe for and have not settled yet: settle it here, naming its actor."""
    intent_id = await cancellations.pending_intent(ctx.session, row.id, mode)
    if intent_id is None:
        return False
    await ctx.session.flush()
    return await cancellations.settle_succeeded(ctx.session, intent_id, adopted_from=ctx.type)


async def apply_state(ctx: EventContext, row: Subscription, sub: dict[str, Any]) -> dict[str, Any]:
    """Copy Stripe's state onto ``row`` and write the audit row the transition calls for."""
    was_cancelling, was_status = row.cancel_at_period_end, row.status
    deleted = ctx.type == DELETED
    status = SubscriptionStatus.CANCELED if deleted else _status(sub)
    plan = plan_for_price(ctx.settings, shapes.subscription_price_id(sub))
    start, end = shapes.subscription_period(sub)
    target: dict[str, Any] = {
        "status": status, "plan_code": plan.code, "current_period_start": start,
        "current_period_end": end, "cancel_at_period_end": bool(sub.get("cancel_at_period_end")),
        "canceled_at": shapes.timestamp(sub.get("canceled_at")) or row.canceled_at,
        "ended_at": shapes.timestamp(sub.get("ended_at")) or row.ended_at,
    }
    if status is SubscriptionStatus.CANCELED:
        target["canceled_at"] = target["canceled_at"] or ctx.created
        target["ended_at"] = target["ended_at"] or target["canceled_at"]
    changes = {name: [_json(getattr(row, name)), _json(value)] for name, value in target.items()
               if value is not None and getattr(row, name) != value}
    for name in changes:
        setattr(row, name, target[name])
    row.stripe_customer_id = row.stripe_customer_id or shapes.ref(sub.get("customer"))
    if row.stripe_updated_at is None or ctx.created > row.stripe_updated_at:
        row.stripe_updated_at = ctx.created
    newly_ended = status is SubscriptionStatus.CANCELED and was_status is not SubscriptionStatus.CANCELED
    if newly_ended and not was_cancelling:
        if not await _adopt_cancellation(ctx, row, CancelMode.IMMEDIATELY):
            record_cancelled(ctx, row, mode="immediately", reason=_cancel_reason(sub))
    elif not newly_ended and row.cancel_at_period_end and not was_cancelling:
        if not await _adopt_cancellation(ctx, row, CancelMode.PERIOD_END):
            record_cancelled(ctx, row, mode="period_end", reason=_cancel_reason(sub))
    elif changes:
        # includes the end of a subscription whose cancellation was already recorded when it
        # was requested, so one cancellation is counted once
        _record(ctx, AuditEvent.SUBSCRIPTION_UPDATED, row,
                {"changes": changes, "plan": row.plan_code})
    return changes


def record_cancelled(ctx: EventContext, row: Subscription, *, mode: str, reason: str | None) -> None:
    _record(ctx, AuditEvent.SUBSCRIPTION_CANCELLED, row, {
        "mode": mode, "plan": row.plan_code, "reason": reason, "source": row.source.value,
        "cancelled_by": "stripe", "ended_at": _iso(row.ended_at),
        "current_period_end": _iso(row.current_period_end)})
    owner_type = row.owner_type.value
    metrics = runtime_of(ctx.session).metrics
    after_commit(ctx.session, lambda: metrics.subscription_cancelled(owner_type, "stripe"))


def _cancel_reason(sub: dict[str, Any]) -> str | None:
    details = sub.get("cancellation_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    return str(reason) if reason else None


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return getattr(value, "value", value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _str(value: uuid.UUID | None) -> str | None:
    return str(value) if value else None
