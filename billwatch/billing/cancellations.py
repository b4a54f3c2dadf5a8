"""Cancelling a subscription: intent, Stripe, settlement, each change a compare-and-set.

Tx 1 checks the subscription can be cancelled this way and inserts a ``pending`` cancellation
(its Stripe idempotency key, the actor) with ``billing.subscription.cancel_requested``; a
partial unique index allows one pending cancellation per subscription, so concurrent cancels
reach Stripe once and the others get a 409. Stripe is called with no transaction open. Tx 2
settles the intent (``pending`` -> ``succeeded`` by a conditional UPDATE) and changes the
subscription with a conditional UPDATE; only the settler that wins writes
``billing.subscription.cancelled`` (or its proxy variant), naming the actor who asked. The
sweeper and the subscription webhooks settle an intent a crash left pending.

A free grant has nothing at Stripe: it is cancelled in one transaction, still by compare-and-set.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome, for_actor
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.models import (
    CancelMode,
    IntentStatus,
    Subscription,
    SubscriptionCancellation,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.billing.subscriptions import cancelled_by, get_subscription
from billwatch.db import Database, after_commit, utcnow
from billwatch.errors import Conflict, NotFound, PaymentProviderError
from billwatch.payments.gateway import PaymentsGateway, stripe_refused
from billwatch.redaction import redact_text
from billwatch.runtime import runtime_of


def _mode(at_period_end: bool) -> CancelMode:
    return CancelMode.PERIOD_END if at_period_end else CancelMode.IMMEDIATELY


def _check_cancellable(subscription: Subscription, mode: CancelMode) -> None:
    if subscription.status is SubscriptionStatus.CANCELED:
        raise Conflict("subscription is already cancelled", code="already_cancelled")
    if mode is CancelMode.PERIOD_END and subscription.cancel_at_period_end:
        raise Conflict("subscription already ends at period end", code="already_cancelling")


def intent_actor(intent: SubscriptionCancellation) -> Actor:
    return Actor(intent.actor_user_id, intent.actor_role, intent.manager_assignment_id)


async def cancel_subscription(db: Database, gateway: PaymentsGateway, *, actor: Actor,
                              subscription_id: uuid.UUID, at_period_end: bool,
                              reason: str | None = None) -> Subscription:
    """Cancel now or at the end of the paid period: intent, Stripe, settlement."""
    mode = _mode(at_period_end)
    async with db.unit_of_work() as session:  # tx 1: check, record the intent
        subscription = await get_subscription(session, subscription_id)
        _check_cancellable(subscription, mode)
        if subscription.source is not SubscriptionSource.STRIPE or not subscription.stripe_subscription_id:
            return await _cancel_locally(session, subscription, actor=actor, reason=reason)
        intent = await _record_intent(session, subscription, actor=actor, mode=mode, reason=reason)
        stripe_id, intent_id, key = subscription.stripe_subscription_id, intent.id, intent.idempotency_key
    try:
        await gateway.cancel_subscription(stripe_id, at_period_end=mode is CancelMode.PERIOD_END,
                                          idempotency_key=key)
    except PaymentProviderError as error:
        if stripe_refused(error):
            await settle_failed(db, intent_id, error)
            error.audited = True
        raise
    async with db.unit_of_work() as session:  # tx 2: settle, as the actor who asked
        await settle_succeeded(session, intent_id)
        return await get_subscription(session, subscription_id)


async def _record_intent(session: AsyncSession, subscription: Subscription, *, actor: Actor,
                         mode: CancelMode, reason: str | None) -> SubscriptionCancellation:
    pending = (await session.scalars(select(SubscriptionCancellation.id).where(
        SubscriptionCancellation.subscription_id == subscription.id,
        SubscriptionCancellation.status == IntentStatus.PENDING))).first()
    if pending is not None:
        raise Conflict(f"cancellation {pending} of this subscription is in progress",
                       code="cancel_in_progress")
    intent_id = uuid.uuid4()
    intent = SubscriptionCancellation(
        id=intent_id, subscription_id=subscription.id, mode=mode, status=IntentStatus.PENDING,
        idempotency_key=f"cancel:{subscription.id}:{mode.value}:{intent_id}",
        actor_user_id=actor.user_id, actor_role=actor.role,
        manager_assignment_id=actor.via_assignment_id, reason=reason)
    try:
        async with session.begin_nested():
            session.add(intent)
    except IntegrityError as error:  # a concurrent cancel inserted its intent first
        raise Conflict("a cancellation of this subscription is in progress",
                       code="cancel_in_progress") from error
    recorder.record(
        session, for_actor(AuditEvent.SUBSCRIPTION_CANCEL_REQUESTED,
                           via_assignment=actor.via_assignment_id is not None),
        actor=actor, owner=OwnerRef(subscription.owner_type, subscription.owner_id),
        resource=Resource("subscription", subscription.id), stripe=_refs(subscription),
        idempotency_key=intent.idempotency_key,
        data={"mode": mode.value, "plan": subscription.plan_code, "reason": reason,
              "cancellation_id": str(intent.id)})
    return intent


async def _apply_cancel(session: AsyncSession, subscription_id: uuid.UUID,
                        mode: CancelMode) -> bool:
    """Change the subscription by compare-and-set; False when it was already in that state."""
    now = utcnow()
    query = update(Subscription).where(Subscription.id == subscription_id,
                                       Subscription.status != SubscriptionStatus.CANCELED)
    if mode is CancelMode.PERIOD_END:
        query = query.where(Subscription.cancel_at_period_end.is_(False)).values(
            cancel_at_period_end=True, updated_at=now)
    else:
        query = query.values(status=SubscriptionStatus.CANCELED, canceled_at=now, ended_at=now,
                             updated_at=now)
    result = await session.execute(query.execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def _cancel_locally(session: AsyncSession, subscription: Subscription, *, actor: Actor,
                          reason: str | None) -> Subscription:
    """A free grant ends here and now (nothing at Stripe), once however many ask at once."""
    if not await _apply_cancel(session, subscription.id, CancelMode.IMMEDIATELY):
        raise Conflict("subscription is already cancelled", code="already_cancelled")
    _record_cancelled(session, subscription, actor=actor, mode=CancelMode.IMMEDIATELY,
                      reason=reason, key=None)
    return await get_subscription_fresh(session, subscription.id)


async def get_subscription_fresh(session: AsyncSession, subscription_id: uuid.UUID) -> Subscription:
    found = await session.get(Subscription, subscription_id, populate_existing=True)
    if found is None:
        raise NotFound(f"subscription {subscription_id} not found", code="subscription_not_found")
    return found


def _refs(subscription: Subscription) -> StripeRefs:
    return StripeRefs(customer_id=subscription.stripe_customer_id,
                      subscription_id=subscription.stripe_subscription_id)


def _record_cancelled(session: AsyncSession, subscription: Subscription, *, actor: Actor,
                      mode: CancelMode, reason: str | None, key: str | None,
                      data: dict[str, Any] | None = None) -> None:
    owner = OwnerRef(subscription.owner_type, subscription.owner_id)
    recorder.record(
        session, for_actor(AuditEvent.SUBSCRIPTION_CANCELLED,
                           via_assignment=actor.via_assignment_id is not None),
        actor=actor, owner=owner, resource=Resource("subscription", subscription.id),
        stripe=_refs(subscription), idempotency_key=key,
        data={"mode": mode.value, "plan": subscription.plan_code, "reason": reason,
              "source": subscription.source.value, **(data or {})})
    who, owner_type = cancelled_by(actor), owner.type.value
    metrics = runtime_of(session).metrics
    after_commit(session, lambda: metrics.subscription_cancelled(owner_type, who))


async def claim_intent(session: AsyncSession, intent_id: uuid.UUID,
                       status: IntentStatus, *, error: str | None = None) -> bool:
    """Move a pending intent to ``status``; True only for the one settler that does."""
    result = await session.execute(
        update(SubscriptionCancellation).where(SubscriptionCancellation.id == intent_id,
                                               SubscriptionCancellation.status == IntentStatus.PENDING)
        .values(status=status, error=error, settled_at=utcnow())
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def settle_succeeded(session: AsyncSession, intent_id: uuid.UUID, *,
                           adopted_from: str | None = None) -> bool:
    """Stripe did it: apply the cancellation and write its one success row, naming the actor."""
    if not await claim_intent(session, intent_id, IntentStatus.SUCCEEDED):
        return False
    intent = await session.get(SubscriptionCancellation, intent_id, populate_existing=True)
    assert intent is not None
    await _apply_cancel(session, intent.subscription_id, intent.mode)
    subscription = await get_subscription_fresh(session, intent.subscription_id)
    _record_cancelled(session, subscription, actor=intent_actor(intent), mode=intent.mode,
                      reason=intent.reason, key=intent.idempotency_key,
                      data={"cancellation_id": str(intent.id), "adopted_from": adopted_from})
    return True


async def settle_failed(db: Database, intent_id: uuid.UUID, error: PaymentProviderError) -> None:
    """Stripe refused: the intent fails, the subscription is untouched, one failure row."""
    reason = redact_text(f"{error.code}: {error.detail}")
    async with db.unit_of_work() as session:
        if not await claim_intent(session, intent_id, IntentStatus.FAILED, error=reason):
            return
        intent = await session.get(SubscriptionCancellation, intent_id, populate_existing=True)
        assert intent is not None
        subscription = await get_subscription(session, intent.subscription_id)
        actor = intent_actor(intent)
        recorder.record(
            session, for_actor(AuditEvent.SUBSCRIPTION_CANCELLED,
                               via_assignment=actor.via_assignment_id is not None),
            actor=actor, outcome=Outcome.FAILURE, reason=reason,
            owner=OwnerRef(subscription.owner_type, subscription.owner_id),
            resource=Resource("subscription", subscription.id), stripe=_refs(subscription),
            idempotency_key=intent.idempotency_key,
            data={"mode": intent.mode.value, "status_code": error.status_code,
                  "cancellation_id": str(intent.id)})


async def pending_intent(session: AsyncSession, subscription_id: uuid.UUID,
                         mode: CancelMode | None = None) -> uuid.UUID | None:
    """The pending cancellation of a subscription (of ``mode``, if given), for adoption."""
    query = select(SubscriptionCancellation.id).where(
        SubscriptionCancellation.subscription_id == subscription_id,
        SubscriptionCancellation.status == IntentStatus.PENDING)
    if mode is not None:
        query = query.where(SubscriptionCancellation.mode == mode)
    found: uuid.UUID | None = (await session.scalars(query)).first()
    return found
