"""What every handler shares: its context, its result, and finding our owner, plan and rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import OwnerRef, SystemActor
from billwatch.accounts.models import OwnerType
from billwatch.audit.recorder import StripeRefs
from billwatch.billing.models import StripeCustomer, Subscription
from billwatch.config import Plan, Settings
from billwatch.errors import Unprocessable
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks.models import EventStatus

STRIPE = SystemActor("stripe")
"""The actor of every change a Stripe event makes."""


class UnknownPlan(Unprocessable):
    """A Stripe price that no configured plan sells: fix the catalogue, then replay the event."""

    def __init__(self, price_id: str | None) -> None:
        super().__init__(f"no billwatch plan has Stripe price {price_id!r}", code="unknown_plan")


class NeedsStripeRead(Exception):
    """A handler needs a subscription from Stripe: read it outside the transaction, rerun."""

    def __init__(self, stripe_subscription_id: str) -> None:
        super().__init__(stripe_subscription_id)
        self.stripe_subscription_id = stripe_subscription_id


@dataclass
class EventContext:
    """One event being handled, inside the transaction that will mark it processed."""

    session: AsyncSession
    gateway: PaymentsGateway
    settings: Settings
    event_id: str
    type: str
    created: datetime
    """Stripe's ``created`` of the event: how new the state it carries is."""
    obj: dict[str, Any]
    """``data.object`` of the event."""
    fetched: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Subscriptions read from Stripe for this event before its transaction began."""

    def subscription_from_stripe(self, stripe_subscription_id: str) -> dict[str, Any]:
        """Stripe's current subscription, read before the transaction (no call under a lock).

        The first time a handler needs it, this raises :class:`NeedsStripeRead`: processing
        rolls the transaction back, reads the subscription with no transaction open, and runs
        the handler again with it.
        """
        found = self.fetched.get(stripe_subscription_id)
        if found is None:
            raise NeedsStripeRead(stripe_subscription_id)
        return found

    def refs(self, *, customer_id: str | None = None, subscription_id: str | None = None,
             invoice_id: str | None = None) -> StripeRefs:
        return StripeRefs(event_id=self.event_id, customer_id=customer_id,
                          subscription_id=subscription_id, invoice_id=invoice_id)


@dataclass
class Handled:
    """What a handler did, for the event row and its ``billing.webhook.received`` audit row."""

    status: EventStatus = EventStatus.PROCESSED
    owner: OwnerRef | None = None
    refs: StripeRefs | None = None
    note: str | None = None
    """Why nothing changed (ignored, already recorded, stale), for the store and the audit row."""
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ignored(cls, note: str, *, refs: StripeRefs | None = None,
                owner: OwnerRef | None = None) -> Handled:
        return cls(EventStatus.IGNORED, owner=owner, refs=refs, note=note)


def plan_for_price(settings: Settings, price_id: str | None) -> Plan:
    """The configured plan sold at ``price_id`` (a Stripe price or legacy plan id)."""
    plan = next((p for p in settings.plans if price_id and p.stripe_price == price_id), None)
    if plan is None:
        raise UnknownPlan(price_id)
    return plan


def owner_from_metadata(meta: dict[str, str]) -> OwnerRef | None:
    """The owner our checkout wrote into Stripe metadata, if it is well formed."""
    try:
        return OwnerRef(OwnerType(meta["billwatch_owner_type"]), uuid.UUID(meta["billwatch_owner_id"]))
    except (KeyError, ValueError):
        return None


def uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


async def owner_for_customer(session: AsyncSession, customer_id: str | None,
                             meta: dict[str, str] | None = None) -> OwnerRef | None:
    """Our owner of a Stripe customer: the customer link first, then checkout metadata."""
    if customer_id:
        found = (await session.execute(
            select(StripeCustomer.owner_type, StripeCustomer.owner_id)
            .where(StripeCustomer.stripe_customer_id == customer_id))).first()
        if found is not None:
            return OwnerRef(found.owner_type, found.owner_id)
    return owner_from_metadata(meta or {})


async def locked_subscription(session: AsyncSession, stripe_subscription_id: str) -> Subscription | None:
    """Our subscription row for a Stripe id, locked until the event's transaction ends.

    The lock serialises every event of one subscription, so the timestamp comparison that keeps
    late events from regressing it always reads the newest committed state.
    """
    result = await session.scalars(
        select(Subscription).where(Subscription.stripe_subscription_id == stripe_subscription_id)
        .with_for_update().execution_options(populate_existing=True))
    return result.first()


@dataclass(frozen=True, slots=True)
class SubscriptionRef:
    """What an event that only refers to a subscription needs of it (read without the ORM)."""

    id: uuid.UUID
    stripe_subscription_id: str | None
    plan_code: str
    owner: OwnerRef

    @classmethod
    def of(cls, row: Subscription) -> SubscriptionRef:
        return cls(row.id, row.stripe_subscription_id, row.plan_code, owner_of(row))


_SUBSCRIPTION_BY_STRIPE_ID = select(
    Subscription.id, Subscription.stripe_subscription_id, Subscription.plan_code,
    Subscription.owner_type, Subscription.owner_id,
).where(Subscription.stripe_subscription_id == bindparam("stripe_id"))


async def find_subscription(session: AsyncSession, stripe_subscription_id: str) -> SubscriptionRef | None:
    """Our subscription for a Stripe id, unlocked (for events that only refer to it)."""
    found = (await session.execute(_SUBSCRIPTION_BY_STRIPE_ID,
                                   {"stripe_id": stripe_subscription_id})).first()
    if found is None:
        return None
    return SubscriptionRef(found.id, found.stripe_subscription_id, found.plan_code,
                           OwnerRef(found.owner_type, found.owner_id))


def owner_of(subscription: Subscription) -> OwnerRef:
    return OwnerRef(subscription.owner_type, subscription.owner_id)
