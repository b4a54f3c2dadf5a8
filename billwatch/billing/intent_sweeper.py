"""Settling checkout and cancel intents a crash, a timeout or a lost answer left ``pending``.

Run by the embedded runner's tick and by a beat task. An intent pending for longer than
``subscription_intent_grace_seconds`` is retried exactly as its request would have gone on:
the same Stripe idempotency key and parameters, then the same compare-and-set settlement
(so a request, a webhook and the sweeper racing settle it once). A cancel is first checked
against Stripe's current state, since cancelling an already-cancelled subscription is refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from billwatch.billing import cancellations
from billwatch.billing.checkout import settle_checkout
from billwatch.billing.models import (
    CancelMode,
    CheckoutSession,
    CheckoutStatus,
    IntentStatus,
    Subscription,
    SubscriptionCancellation,
)
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.errors import PaymentProviderError
from billwatch.payments.gateway import PaymentsGateway, stripe_refused

log = structlog.get_logger(__name__)

BATCH = 50
"""Intents settled per sweep; the next sweep takes the rest."""


@dataclass
class SweepResult:
    checkouts: list[uuid.UUID] = field(default_factory=list)
    cancellations: list[uuid.UUID] = field(default_factory=list)
    still_pending: int = 0


async def _due(db: Database, cutoff: datetime) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    async with db.unit_of_work() as session:
        checkouts = (await session.scalars(select(CheckoutSession.id).where(
            CheckoutSession.status == CheckoutStatus.PENDING, CheckoutSession.created_at <= cutoff)
            .order_by(CheckoutSession.created_at).limit(BATCH))).all()
        cancels = (await session.scalars(select(SubscriptionCancellation.id).where(
            SubscriptionCancellation.status == IntentStatus.PENDING,
            SubscriptionCancellation.created_at <= cutoff)
            .order_by(SubscriptionCancellation.created_at).limit(BATCH))).all()
    return list(checkouts), list(cancels)


async def sweep_subscription_intents(db: Database, settings: Settings, *,
                                     gateway: PaymentsGateway | None = None,
                                     now: datetime | None = None) -> SweepResult:
    """Retry every checkout and cancel intent pending past the grace period; report what moved."""
    cutoff = (now or utcnow()) - timedelta(seconds=settings.subscription_intent_grace_seconds)
    checkout_ids, cancel_ids = await _due(db, cutoff)
    result = SweepResult()
    if not checkout_ids and not cancel_ids:
        return result
    gateway = gateway or PaymentsGateway(settings)
    for checkout_id in checkout_ids:
        try:
            settled = await settle_checkout(db, gateway, settings, checkout_id)
        except Exception as error:  # one intent must not stop the sweep; Stripe may be down
            log.warning("checkout_intent_still_pending", checkout_id=str(checkout_id),
                        error_type=type(error).__name__)
            result.still_pending += 1
            continue
        if settled.status is not CheckoutStatus.PENDING:
            result.checkouts.append(checkout_id)
    for intent_id in cancel_ids:
        try:
            if await settle_cancellation(db, gateway, intent_id):
                result.cancellations.append(intent_id)
        except Exception as error:
            log.warning("cancel_intent_still_pending", cancellation_id=str(intent_id),
                        error_type=type(error).__name__)
            result.still_pending += 1
    if result.checkouts or result.cancellations:
        log.info("subscription_intents_swept", checkouts=len(result.checkouts),
                 cancellations=len(result.cancellations), still_pending=result.still_pending)
    return result


async def settle_cancellation(db: Database, gateway: PaymentsGateway, intent_id: uuid.UUID) -> bool:
    """Finish one pending cancel: Stripe already did it, or ask again with the same key."""
    async with db.unit_of_work() as session:
        intent = await session.get(SubscriptionCancellation, intent_id)
        if intent is None or intent.status is not IntentStatus.PENDING:
            return False
        subscription = await session.get(Subscription, intent.subscription_id)
        assert subscription is not None and subscription.stripe_subscription_id is not None
        stripe_id, mode, key = subscription.stripe_subscription_id, intent.mode, intent.idempotency_key
    current = await gateway.retrieve_subscription(stripe_id)
    done = (current.get("status") == "canceled" if mode is CancelMode.IMMEDIATELY
            else bool(current.get("cancel_at_period_end")) or current.get("status") == "canceled")
    if not done:
        try:
            await gateway.cancel_subscription(stripe_id, at_period_end=mode is CancelMode.PERIOD_END,
                                              idempotency_key=key)
        except PaymentProviderError as error:
            if stripe_refused(error):
                await cancellations.settle_failed(db, intent_id, error)
                return True
            raise
    async with db.unit_of_work() as session:
        return await cancellations.settle_succeeded(session, intent_id, adopted_from="sweeper")
