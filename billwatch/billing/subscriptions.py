"""Reading an owner's billing; cancelling lives in :mod:`billwatch.billing.cancellations`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import Role
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, for_actor
from billwatch.audit.recorder import Resource
from billwatch.billing.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    BillingOverride,
    Subscription,
    Transaction,
)
from billwatch.config import Plan, Settings
from billwatch.db import after_commit
from billwatch.errors import Conflict, NotFound
from billwatch.runtime import runtime_of

TRANSACTIONS_SHOWN = 100


@dataclass(frozen=True, slots=True)
class BillingAccount:
    owner: OwnerRef
    subscriptions: list[Subscription]
    transactions: list[Transaction]
    overrides: list[BillingOverride]


def require_plan(settings: Settings, plan_code: str) -> Plan:
    plan = settings.plan(plan_code)
    if plan is None:
        raise NotFound(f"plan {plan_code!r} not found", code="plan_not_found")
    return plan


async def ensure_no_live_subscription(session: AsyncSession, owner: OwnerRef) -> None:
    """An owner holds at most one live subscription; a second one must wait for a cancel."""
    live = await session.scalars(select(Subscription.id).where(
        Subscription.owner_type == owner.type, Subscription.owner_id == owner.id,
        Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES)))
    if live.first() is not None:
        raise Conflict("owner already has a live subscription; cancel it first",
                       code="subscription_exists")


async def get_subscription(session: AsyncSession, subscription_id: uuid.UUID) -> Subscription:
    subscription = await session.get(Subscription, subscription_id)
    if subscription is None:
        raise NotFound(f"subscription {subscription_id} not found", code="subscription_not_found")
    return subscription


async def read_account(session: AsyncSession, *, actor: Actor, owner: OwnerRef) -> BillingAccount:
    """The owner's subscriptions, latest transactions and overrides; the read is audited."""
    subs = await session.scalars(select(Subscription).where(
        Subscription.owner_type == owner.type, Subscription.owner_id == owner.id)
        .order_by(Subscription.created_at.desc()))
    txs = await session.scalars(select(Transaction).where(
        Transaction.owner_type == owner.type, Transaction.owner_id == owner.id)
        .order_by(Transaction.created_at.desc()).limit(TRANSACTIONS_SHOWN))
    overrides = await session.scalars(select(BillingOverride).where(
        BillingOverride.owner_type == owner.type, BillingOverride.owner_id == owner.id)
        .order_by(BillingOverride.created_at.desc()))
    by_proxy = actor.via_assignment_id is not None
    recorder.record(session, for_actor(AuditEvent.SUBSCRIPTION_VIEWED, via_assignment=by_proxy),
                    actor=actor, owner=owner, resource=Resource(owner.type.value, owner.id))
    if by_proxy:
        after_commit(session, runtime_of(session).metrics.proxy_viewed)
    return BillingAccount(owner, list(subs), list(txs), list(overrides))


def cancelled_by(actor: Actor) -> str:
    if actor.via_assignment_id is not None:
        return "proxy"
    return "admin" if actor.role is Role.ADMIN else "owner"
