"""Billing overrides: free grants, discounts and payment exemptions decided by an admin.

A free grant lives only in billwatch (a subscription that never bills). A discount and a payment
exemption change what Stripe charges, so they follow intent, call, settle: a ``pending`` row
and its audit row commit, the gateway applies the coupon or the pause with no transaction open,
and a second transaction settles the row ``active`` (with the Stripe ids) or ``failed``.
Revoking claims the row with one conditional UPDATE (``active`` -> ``revoking``), so of two
concurrent revokes exactly one goes on to Stripe and the other gets 409.
"""

from __future__ import annotations

import calendar
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import case, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.models import (
    LIVE_OVERRIDE_STATES,
    LIVE_SUBSCRIPTION_STATUSES,
    BillingOverride,
    OverrideKind,
    OverrideState,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.billing.subscriptions import ensure_no_live_subscription, require_plan
from billwatch.config import Settings
from billwatch.db import Database, UTCDateTime, utcnow
from billwatch.errors import Conflict, NotFound, PaymentProviderError, Unprocessable
from billwatch.payments.gateway import Coupon, DiscountInfo, PaymentsGateway, stripe_refused

EXEMPTION_BEHAVIOR = "void"
"""``pause_collection`` behavior of an exemption: invoices are voided, so nothing is owed later
(``keep_as_draft`` would pile up drafts to collect on resume: a deferral, not an exemption)."""

OverrideActor = Actor | SystemActor


def add_months(moment: datetime, months: int) -> datetime:
    """The same day ``months`` later, clamped to the month's last day (Jan 31 + 1 = Feb 28)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


async def get_override(session: AsyncSession, override_id: uuid.UUID) -> BillingOverride:
    override = await session.get(BillingOverride, override_id, populate_existing=True)
    if override is None:
        raise NotFound(f"override {override_id} not found", code="override_not_found")
    return override


def owner_of(override: BillingOverride) -> OwnerRef:
    return OwnerRef(override.owner_type, override.owner_id)


def _stripe_refs(override: BillingOverride) -> StripeRefs:
    return StripeRefs(subscription_id=override.stripe_subscription_id)


def _stripe_ids(override: BillingOverride) -> dict[str, str | None]:
    return {"stripe_subscription_id": override.stripe_subscription_id,
            "stripe_coupon_id": override.stripe_coupon_id,
            "stripe_discount_id": override.stripe_discount_id}


async def free_grant_rows(session: AsyncSession, settings: Settings, *, actor: Actor,
                          owner: OwnerRef, plan_code: str, months: int | None,
                          reason: str) -> tuple[Subscription, BillingOverride]:
    """A free grant's checks and its two rows, not yet added; the benchmark's baseline writes
    the same rows without the audit row, so the two cannot drift apart."""
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
        reason=reason, subscription_id=subscription.id, created_by_user_id=actor.user_id,
        state=OverrideState.ACTIVE, applied_at=now)
    return subscription, override


async def grant_free_subscription(session: AsyncSession, settings: Settings, *, actor: Actor,
                                  owner: OwnerRef, plan_code: str, months: int | None,
                                  reason: str) -> BillingOverride:
    """Give ``owner`` the plan for free for ``months`` (or with no end); no money moves."""
    subscription, override = await free_grant_rows(
        session, settings, actor=actor, owner=owner, plan_code=plan_code, months=months,
        reason=reason)
    ends_at = override.ends_at
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
                    data={"plan": override.plan_code, "months": months, "reason": reason,
                          "subscription_id": str(subscription.id),
                          "ends_at": ends_at.isoformat() if ends_at else None})
    return override


# --- discounts and exemptions: intent, Stripe, settlement ---------------------------------

def _validate_adjustment(kind: OverrideKind, *, percent_off: int | None,
                         amount_off_cents: int | None, plan_code: str | None,
                         ends_at: datetime | None) -> None:
    if kind is OverrideKind.FREE_SUBSCRIPTION:
        raise Unprocessable("grant free subscriptions through /admin/free-grants",
                            code="use_free_grant")
    if kind is OverrideKind.DISCOUNT:
        if percent_off is not None and amount_off_cents is not None:
            raise Unprocessable("a discount takes either percent_off or amount_off_cents",
                                code="discount_ambiguous")
        if amount_off_cents is None and (percent_off is None or not 1 <= percent_off <= 100):
            raise Unprocessable("a discount needs percent_off between 1 and 100 "
                                "(or amount_off_cents)", code="percent_off_required")
        if amount_off_cents is not None and amount_off_cents <= 0:
            raise Unprocessable("amount_off_cents must be above zero", code="amount_off_invalid")
    elif percent_off is not None or amount_off_cents is not None:
        raise Unprocessable("percent_off and amount_off_cents only apply to discounts",
                            code="percent_off_not_allowed")
    if plan_code is not None:
        raise Unprocessable("an override applies to the owner's live subscription, whatever "
                            "its plan; plan_code is for free grants", code="plan_code_not_allowed")
    if ends_at is not None and ends_at <= utcnow():
        raise Unprocessable("ends_at must be in the future", code="ends_at_in_past")


async def _live_stripe_subscription(session: AsyncSession, owner: OwnerRef) -> Subscription:
    found = (await session.scalars(select(Subscription).where(
        Subscription.owner_type == owner.type, Subscription.owner_id == owner.id,
        Subscription.source == SubscriptionSource.STRIPE,
        Subscription.stripe_subscription_id.is_not(None),
        Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES)).order_by(Subscription.created_at.desc()))).first()
    if found is None:
        raise Conflict("owner has no live Stripe subscription to apply the override to",
                       code="no_stripe_subscription")
    return found


async def _ensure_slot_free(session: AsyncSession, owner: OwnerRef, kind: OverrideKind) -> None:
    existing = (await session.scalars(select(BillingOverride.id).where(
        BillingOverride.owner_type == owner.type, BillingOverride.owner_id == owner.id,
        BillingOverride.kind == kind, BillingOverride.state.in_(LIVE_OVERRIDE_STATES)))).first()
    if existing is not None:
        raise Conflict(f"owner already has a {kind.value} override ({existing}); revoke it first",
                       code="override_exists")


async def reserve_override(session: AsyncSession, settings: Settings, *, actor: Actor,
                           owner: OwnerRef, kind: OverrideKind, reason: str,
                           percent_off: int | None, amount_off_cents: int | None,
                           plan_code: str | None, ends_at: datetime | None) -> BillingOverride:
    """Validate and write the ``pending`` intent (one live override per owner and kind)."""
    _validate_adjustment(kind, percent_off=percent_off, amount_off_cents=amount_off_cents,
                         plan_code=plan_code, ends_at=ends_at)
    await accounts.owner_display(session, owner)
    subscription = await _live_stripe_subscription(session, owner)
    await _ensure_slot_free(session, owner, kind)
    now = utcnow()
    override = BillingOverride(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, kind=kind,
        percent_off=percent_off, amount_off_cents=amount_off_cents,
        currency=settings.plans[0].currency if amount_off_cents is not None else None,
        starts_at=now, ends_at=ends_at, reason=reason, subscription_id=subscription.id,
        stripe_subscription_id=subscription.stripe_subscription_id,
        created_by_user_id=actor.user_id, state=OverrideState.PENDING, state_changed_at=now)
    session.add(override)
    try:
        await session.flush()
    except IntegrityError as error:  # a concurrent create took the slot after our check
        raise Conflict(f"owner already has a {kind.value} override; revoke it first",
                       code="override_exists") from error
    recorder.record(session, AuditEvent.OVERRIDE_REQUESTED, actor=actor, owner=owner,
                    resource=Resource("billing_override", override.id),
                    stripe=_stripe_refs(override), idempotency_key=apply_key(override.id),
                    data=_terms(override))
    return override


def _terms(override: BillingOverride) -> dict[str, object]:
    return {"kind": override.kind.value, "percent_off": override.percent_off,
            "amount_off_cents": override.amount_off_cents, "currency": override.currency,
            "reason": override.reason, "subscription_id": str(override.subscription_id),
            "ends_at": override.ends_at.isoformat() if override.ends_at else None}


def apply_key(override_id: uuid.UUID) -> str:
    """The Stripe idempotency key of applying an override (the same on every retry)."""
    return f"override:{override_id}:apply"


def coupon_id(override_id: uuid.UUID) -> str:
    """The override's own coupon at Stripe: one per override, so revoking can delete it.

    The id is written in its canonical dashed form: a bare hex id can hold a run of 13 or more
    digits that passes Luhn, which the redactor masks as a card number wherever the coupon id
    is recorded (the audit row, the console).
    """
    return f"billwatch_override_{override_id}"


async def apply_at_stripe(gateway: PaymentsGateway, override: BillingOverride) -> DiscountInfo | None:
    assert override.stripe_subscription_id is not None
    if override.kind is OverrideKind.PAYMENT_EXEMPTION:
        await gateway.pause_collection(override.stripe_subscription_id,
                                       behavior=EXEMPTION_BEHAVIOR,
                                       idempotency_key=apply_key(override.id))
        return None
    coupon = Coupon(coupon_id(override.id), override.percent_off, override.amount_off_cents,
                    override.currency)
    return await gateway.apply_discount(
        override.stripe_subscription_id, coupon=coupon,
        metadata={"billwatch_override_id": str(override.id),
                  "billwatch_owner_type": override.owner_type.value,
                  "billwatch_owner_id": str(override.owner_id)},
        idempotency_key=apply_key(override.id))


async def _settle(session: AsyncSession, override_id: uuid.UUID, *, expected: OverrideState,
                  values: dict[str, Any]) -> bool:
    """Move the override out of ``expected`` with one conditional UPDATE (the transaction's
    first statement); False when another settlement got there first."""
    result = await session.execute(
        update(BillingOverride)
        .where(BillingOverride.id == override_id, BillingOverride.state == expected)
        .values(state_changed_at=utcnow(), **values)
        .execution_options(synchronize_session=False))
    return bool(getattr(result, "rowcount", 0))


async def settle_applied(session: AsyncSession, *, actor: OverrideActor, override_id: uuid.UUID,
                         discount: DiscountInfo | None) -> BillingOverride:
    """Mark the intent ``active`` with its Stripe ids, once; the audit row names them."""
    ids = ({"stripe_coupon_id": discount.coupon_id, "stripe_discount_id": discount.discount_id}
           if discount is not None else {})
    settled = await _settle(session, override_id, expected=OverrideState.PENDING,
                            values={"state": OverrideState.ACTIVE, "applied_at": utcnow(), **ids})
    override = await get_override(session, override_id)
    if settled:
        recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=actor,
                        owner=owner_of(override),
                        resource=Resource("billing_override", override.id),
                        stripe=_stripe_refs(override), idempotency_key=apply_key(override.id),
                        data={**_terms(override), **_stripe_ids(override),
                              "pause_behavior": EXEMPTION_BEHAVIOR
                              if override.kind is OverrideKind.PAYMENT_EXEMPTION else None})
    return override


async def settle_failed(session: AsyncSession, *, override_id: uuid.UUID, code: str) -> None:
    """Stripe refused: the intent ends ``failed`` and frees the owner's slot."""
    await _settle(session, override_id, expected=OverrideState.PENDING,
                  values={"state": OverrideState.FAILED, "failure_code": code[:80]})


async def create_override(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                          actor: Actor, owner: OwnerRef, kind: OverrideKind, reason: str,
                          percent_off: int | None = None, amount_off_cents: int | None = None,
                          plan_code: str | None = None,
                          ends_at: datetime | None = None) -> BillingOverride:
    """A discount or payment exemption, in effect at Stripe before it is ``active`` here."""
    async with db.unit_of_work() as session:
        override = await reserve_override(
            session, settings, actor=actor, owner=owner, kind=kind, reason=reason,
            percent_off=percent_off, amount_off_cents=amount_off_cents, plan_code=plan_code,
            ends_at=ends_at)
    return await apply_pending(db, gateway, override, actor=actor)


async def apply_pending(db: Database, gateway: PaymentsGateway, override: BillingOverride, *,
                        actor: OverrideActor) -> BillingOverride:
    """The Stripe call and settlement of a committed intent (also how a retry resumes one)."""
    try:
        discount = await apply_at_stripe(gateway, override)
    except PaymentProviderError as error:
        if stripe_refused(error):  # a refusal: nothing changed at Stripe
            async with db.unit_of_work() as session:
                await settle_failed(session, override_id=override.id, code=error.code)
        # no answer: Stripe may have applied it; it stays pending for the sweeper's retry
        raise
    async with db.unit_of_work() as session:
        return await settle_applied(session, actor=actor, override_id=override.id,
                                    discount=discount)


# --- revoking and expiring ----------------------------------------------------------------

def revoke_key(override_id: uuid.UUID) -> str:
    return f"override:{override_id}:revoke"


async def claim_active(session: AsyncSession, override_id: uuid.UUID, *, target: Any,
                 values: dict[str, Any]) -> bool:
    """Move an ``active`` override to ``target`` with one conditional UPDATE; False if taken.

    The UPDATE is the transaction's first statement, so on SQLite it takes the write lock
    before reading anything (a read first could not be upgraded once another writer commits).
    """
    result = await session.execute(
        update(BillingOverride)
        .where(BillingOverride.id == override_id, BillingOverride.state == OverrideState.ACTIVE)
        .values(state=target, **values).execution_options(synchronize_session=False))
    return bool(getattr(result, "rowcount", 0))


def _not_revocable(override: BillingOverride) -> Conflict:
    reasons = {
        OverrideState.REVOKING: ("a revoke of this override is in progress", "revoke_in_progress"),
        OverrideState.PENDING: ("the override is still being applied at Stripe",
                                "override_pending"),
        OverrideState.FAILED: ("the override never took effect", "override_failed"),
        OverrideState.EXPIRED: ("the override has already expired", "already_expired"),
    }
    detail, code = reasons.get(override.state, ("override is already revoked", "already_revoked"))
    return Conflict(detail, code=code)


async def end_free_grant(session: AsyncSession, override: BillingOverride, *,
                          at: datetime) -> str | None:
    if override.subscription_id is None:
        return None
    subscription = await session.get(Subscription, override.subscription_id,
                                     populate_existing=True)
    if subscription is None or subscription.status is SubscriptionStatus.CANCELED:
        return None
    subscription.status = SubscriptionStatus.CANCELED
    subscription.ended_at = at
    return str(subscription.id)


async def revoke_override(db: Database, gateway: PaymentsGateway, *, actor: OverrideActor,
                          override_id: uuid.UUID, reason: str) -> BillingOverride:
    """End an override now: a free grant ends its subscription; a discount or exemption is
    removed at Stripe first (claim, call, settle)."""
    now = utcnow()
    user_id = actor.user_id if isinstance(actor, Actor) else None
    is_free = BillingOverride.kind == OverrideKind.FREE_SUBSCRIPTION
    async with db.unit_of_work() as session:
        claimed = await claim_active(
            session, override_id,
            target=case((is_free, OverrideState.REVOKED.value),
                        else_=OverrideState.REVOKING.value),
            values={"revoked_by_user_id": user_id, "revoke_reason": reason,
                    "state_changed_at": now,
                    "revoked_at": case((is_free, literal(now, UTCDateTime())), else_=None)})
        override = await get_override(session, override_id)
        if not claimed:
            raise _not_revocable(override)
        if override.kind is OverrideKind.FREE_SUBSCRIPTION:
            ended = await end_free_grant(session, override, at=now)
            recorder.record(session, AuditEvent.OVERRIDE_REVOKED, actor=actor,
                            owner=owner_of(override),
                            resource=Resource("billing_override", override.id),
                            data={"kind": override.kind.value, "reason": reason,
                                  "ended_subscription_id": ended})
            return override
    return await remove_at_stripe(db, gateway, override, actor=actor, reason=reason,
                                   event=AuditEvent.OVERRIDE_REVOKED)


async def remove_at_stripe(db: Database, gateway: PaymentsGateway, override: BillingOverride, *,
                            actor: OverrideActor, reason: str,
                            event: AuditEvent) -> BillingOverride:
    assert override.stripe_subscription_id is not None
    try:
        if override.kind is OverrideKind.PAYMENT_EXEMPTION:
            await gateway.resume_collection(override.stripe_subscription_id,
                                            idempotency_key=revoke_key(override.id))
        else:
            await gateway.remove_discount(override.stripe_subscription_id,
                                          coupon_id=override.stripe_coupon_id or
                                          coupon_id(override.id),
                                          idempotency_key=revoke_key(override.id))
    except PaymentProviderError as error:
        if stripe_refused(error):  # refused: still in effect at Stripe, so active here
            async with db.unit_of_work() as session:
                await _settle(session, override.id, expected=OverrideState.REVOKING,
                              values={"state": OverrideState.ACTIVE, "revoked_by_user_id": None,
                                      "revoke_reason": None})
        raise  # no answer: it stays revoking, and the sweeper retries with the same key
    expired = event is AuditEvent.OVERRIDE_EXPIRED
    now = utcnow()
    async with db.unit_of_work() as session:
        settled = await _settle(
            session, override.id, expected=OverrideState.REVOKING,
            values={"state": OverrideState.EXPIRED, "expired_at": now} if expired else
            {"state": OverrideState.REVOKED, "revoked_at": now})
        override = await get_override(session, override.id)
        if settled:
            recorder.record(session, event, actor=actor, owner=owner_of(override),
                            resource=Resource("billing_override", override.id),
                            stripe=_stripe_refs(override),
                            idempotency_key=revoke_key(override.id),
                            data={"kind": override.kind.value, "reason": reason,
                                  "ended_subscription_id": None, **_stripe_ids(override)})
    return override
