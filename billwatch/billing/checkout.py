"""Checkout and the customer portal: the two ways an owner reaches Stripe's hosted pages.

A checkout is two-phase: a ``pending`` row (the intent, with its Stripe idempotency key, actor
and parameters) and its ``billing.checkout.requested`` row commit before Stripe is asked; the
Stripe customer (on first need) and the Checkout session are created with no transaction open;
a second transaction settles the row ``open`` (or ``failed``) with ``billing.checkout.created``.
A row left ``pending`` (a crash, a lost answer) is settled by :func:`settle_checkout` from the
sweeper, or adopted by the ``checkout.session.completed`` webhook. At most one ``pending`` or
``open`` checkout exists per owner, which the database enforces (a partial unique index).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.accounts.models import User
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome, for_actor
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.customers import ensure_customer, find_customer
from billwatch.billing.models import OPEN_CHECKOUT_STATUSES, CheckoutSession, CheckoutStatus
from billwatch.billing.subscriptions import ensure_no_live_subscription, require_plan
from billwatch.config import Settings
from billwatch.db import Database, after_commit, utcnow
from billwatch.errors import Conflict, NotFound, PaymentProviderError
from billwatch.hardening import check_redirect
from billwatch.payments.gateway import (
    CheckoutSessionInfo,
    PaymentsGateway,
    PortalSessionInfo,
    stripe_refused,
)
from billwatch.redaction import redact_text
from billwatch.runtime import runtime_of

CHECKOUT_EXPIRY = SystemActor("checkout-expiry")
"""The actor that marks a checkout whose Stripe session has expired."""


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    checkout: CheckoutSession
    created: bool
    """False when the owner's open checkout was returned instead of a new one."""


async def create_checkout(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                          actor: Actor, owner: OwnerRef, plan_code: str,
                          success_url: str | None = None,
                          cancel_url: str | None = None) -> CheckoutResult:
    """A Checkout for ``owner``: the open one if there is one, else intent, Stripe, settlement."""
    success_url = check_redirect(success_url, settings, field="success_url")  # 422: no open
    cancel_url = check_redirect(cancel_url, settings, field="cancel_url")  # redirects
    plan = require_plan(settings, plan_code)
    base = settings.public_base_url.rstrip("/")
    async with db.unit_of_work() as session:  # tx 1: validate and record the intent
        existing = await open_checkout(session, owner)
        if existing is not None:
            return CheckoutResult(reuse_checkout(session, existing, actor=actor, plan_code=plan.code),
                                  created=False)
        await ensure_no_live_subscription(session, owner)
        checkout_id = uuid.uuid4()
        checkout = CheckoutSession(
            id=checkout_id, owner_type=owner.type, owner_id=owner.id, plan_code=plan.code,
            status=CheckoutStatus.PENDING, created_by_user_id=actor.user_id,
            manager_assignment_id=actor.via_assignment_id, idempotency_key=f"checkout:{checkout_id}",
            expires_at=utcnow() + timedelta(seconds=settings.checkout_session_ttl_seconds),
            success_url=success_url or f"{base}/billing/checkout/success",
            cancel_url=cancel_url or f"{base}/billing/checkout/cancelled")
        if not await _insert_intent(session, checkout):
            # a concurrent checkout for this owner (its proxy, say) committed first: share it
            raced = await open_checkout(session, owner)
            if raced is None:
                raise Conflict("another checkout for this owner just settled; retry",
                               code="checkout_in_progress")
            return CheckoutResult(reuse_checkout(session, raced, actor=actor, plan_code=plan.code),
                                  created=False)
        by_proxy = actor.via_assignment_id is not None
        recorder.record(
            session, for_actor(AuditEvent.CHECKOUT_REQUESTED, via_assignment=by_proxy), actor=actor,
            owner=owner, resource=Resource("checkout_session", checkout.id),
            idempotency_key=checkout.idempotency_key,
            data={"plan": plan.code, "amount_cents": plan.amount_cents, "currency": plan.currency,
                  "interval": plan.interval.value, "expires_at": checkout.expires_at.isoformat()
                  if checkout.expires_at else None})
    return CheckoutResult(await settle_checkout(db, gateway, settings, checkout_id), created=True)


async def _insert_intent(session: AsyncSession, checkout: CheckoutSession) -> bool:
    """Insert the intent; False when the one-open-checkout-per-owner index refuses it."""
    try:
        async with session.begin_nested():
            session.add(checkout)
    except IntegrityError:
        return False
    return True


async def open_checkout(session: AsyncSession, owner: OwnerRef) -> CheckoutSession | None:
    """The owner's pending or open checkout; one whose session has expired is closed first."""
    found = (await session.scalars(select(CheckoutSession).where(
        CheckoutSession.owner_type == owner.type, CheckoutSession.owner_id == owner.id,
        CheckoutSession.status.in_(OPEN_CHECKOUT_STATUSES)))).first()
    if found is None:
        return None
    if (found.status is CheckoutStatus.OPEN and found.expires_at is not None
            and found.expires_at <= utcnow()):
        await expire_checkout(session, found)
        return None
    return found


async def expire_checkout(session: AsyncSession, checkout: CheckoutSession) -> bool:
    """Mark an open checkout expired (compare-and-set: once, whoever sees it first)."""
    result = await session.execute(
        update(CheckoutSession).where(CheckoutSession.id == checkout.id,
                                      CheckoutSession.status == CheckoutStatus.OPEN)
        .values(status=CheckoutStatus.EXPIRED)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    checkout.status = CheckoutStatus.EXPIRED
    recorder.record(session, AuditEvent.CHECKOUT_EXPIRED, actor=CHECKOUT_EXPIRY,
                    owner=OwnerRef(checkout.owner_type, checkout.owner_id),
                    resource=Resource("checkout_session", checkout.id),
                    stripe=StripeRefs(customer_id=checkout.stripe_customer_id),
                    data={"plan": checkout.plan_code, "stripe_session_id": checkout.stripe_session_id,
                          "expires_at": checkout.expires_at.isoformat()
                          if checkout.expires_at else None})
    return True


def reuse_checkout(session: AsyncSession, checkout: CheckoutSession, *, actor: Actor,
                   plan_code: str) -> CheckoutSession:
    """The owner's open checkout for the same plan; any other one is a 409 naming it."""
    if checkout.status is CheckoutStatus.PENDING:
        raise Conflict(f"checkout {checkout.id} for this owner is being opened; retry shortly",
                       code="checkout_in_progress")
    if checkout.plan_code != plan_code:
        until = checkout.expires_at.isoformat() if checkout.expires_at else "it is completed"
        raise Conflict(f"checkout {checkout.id} for plan {checkout.plan_code!r} is open until "
                       f"{until}; complete it or let it expire first", code="checkout_open")
    by_proxy = actor.via_assignment_id is not None
    recorder.record(
        session, for_actor(AuditEvent.CHECKOUT_REUSED, via_assignment=by_proxy), actor=actor,
        owner=OwnerRef(checkout.owner_type, checkout.owner_id),
        resource=Resource("checkout_session", checkout.id),
        stripe=StripeRefs(customer_id=checkout.stripe_customer_id),
        data={"plan": checkout.plan_code, "stripe_session_id": checkout.stripe_session_id,
              "opened_by_user_id": str(checkout.created_by_user_id)})
    return checkout


async def intent_actor(session: AsyncSession, checkout: CheckoutSession) -> Actor:
    """Who asked for a checkout, rebuilt from its row (for the sweeper and webhook)."""
    user = await session.get(User, checkout.created_by_user_id)
    if user is None:
        raise NotFound(f"user {checkout.created_by_user_id} not found", code="user_not_found")
    return Actor(user.id, user.role, checkout.manager_assignment_id)


def _metadata(checkout: CheckoutSession) -> dict[str, str]:
    metadata = {
        "billwatch_checkout_id": str(checkout.id),
        "billwatch_owner_type": checkout.owner_type.value,
        "billwatch_owner_id": str(checkout.owner_id),
        "billwatch_plan": checkout.plan_code,
    }
    if checkout.manager_assignment_id is not None:
        metadata["billwatch_proxy_id"] = str(checkout.created_by_user_id)
        metadata["billwatch_assignment_id"] = str(checkout.manager_assignment_id)
    return metadata


async def settle_checkout(db: Database, gateway: PaymentsGateway, settings: Settings,
                          checkout_id: uuid.UUID) -> CheckoutSession:
    """Phases 2 and 3 of a checkout, for its request or a retry: same keys, same parameters."""
    async with db.unit_of_work() as session:
        checkout = await session.get(CheckoutSession, checkout_id)
        if checkout is None:
            raise NotFound(f"checkout {checkout_id} not found", code="checkout_not_found")
        if checkout.status is not CheckoutStatus.PENDING:
            return checkout
        actor = await intent_actor(session, checkout)
        owner = OwnerRef(checkout.owner_type, checkout.owner_id)
        customer = await find_customer(session, owner)
        display = None if customer is not None else await accounts.owner_display(session, owner)
    plan = require_plan(settings, checkout.plan_code)
    customer_created = False
    if customer is None:
        assert display is not None
        customer, customer_created = await ensure_customer(db, gateway, owner=owner,
                                                           display=display)
    try:
        info = await gateway.create_checkout_session(
            customer_id=customer.stripe_customer_id, plan=plan,
            success_url=checkout.success_url or "", cancel_url=checkout.cancel_url or "",
            metadata=_metadata(checkout), idempotency_key=checkout.idempotency_key,
            expires_at=int(checkout.expires_at.timestamp()) if checkout.expires_at else 0)
    except PaymentProviderError as error:
        if stripe_refused(error):
            await _settle_failed(db, checkout_id, actor=actor, error=error)
            error.audited = True
        raise
    async with db.unit_of_work() as session:
        return await settle_open(session, settings, checkout_id, info, actor=actor,
                                 customer_created=customer_created)


async def settle_open(session: AsyncSession, settings: Settings, checkout_id: uuid.UUID,
                      info: CheckoutSessionInfo, *, actor: Actor, customer_created: bool,
                      adopted_from: str | None = None,
                      status: CheckoutStatus = CheckoutStatus.OPEN) -> CheckoutSession:
    """Record Stripe's session on the pending intent, once: the first settler writes the row."""
    result = await session.execute(
        update(CheckoutSession).where(CheckoutSession.id == checkout_id,
                                      CheckoutSession.status == CheckoutStatus.PENDING)
        .values(status=status, stripe_session_id=info.id, stripe_customer_id=info.customer_id,
                url=info.url or None, settled_at=utcnow())
        .execution_options(synchronize_session=False))
    checkout = await session.get(CheckoutSession, checkout_id, populate_existing=True)
    assert checkout is not None
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return checkout  # the sweeper, the webhook or the request settled it first
    plan = require_plan(settings, checkout.plan_code)
    owner = OwnerRef(checkout.owner_type, checkout.owner_id)
    by_proxy = actor.via_assignment_id is not None
    recorder.record(
        session, for_actor(AuditEvent.CHECKOUT_CREATED, via_assignment=by_proxy), actor=actor,
        owner=owner, resource=Resource("checkout_session", checkout.id),
        stripe=StripeRefs(customer_id=info.customer_id), idempotency_key=checkout.idempotency_key,
        data={"plan": plan.code, "amount_cents": plan.amount_cents, "currency": plan.currency,
              "interval": plan.interval.value, "stripe_session_id": info.id,
              "customer_created": customer_created, "adopted_from": adopted_from})
    owner_type, plan_code = owner.type.value, plan.code
    metrics = runtime_of(session).metrics
    after_commit(session, lambda: metrics.checkout_created(owner_type, plan_code,
                                                           by_proxy=by_proxy))
    return checkout


async def _settle_failed(db: Database, checkout_id: uuid.UUID, *, actor: Actor,
                         error: PaymentProviderError) -> None:
    """Stripe refused: the intent is failed (freeing the owner) with its one failure row."""
    reason = redact_text(f"{error.code}: {error.detail}")
    async with db.unit_of_work() as session:
        result = await session.execute(
            update(CheckoutSession).where(CheckoutSession.id == checkout_id,
                                          CheckoutSession.status == CheckoutStatus.PENDING)
            .values(status=CheckoutStatus.FAILED, error=reason, settled_at=utcnow())
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return
        checkout = await session.get(CheckoutSession, checkout_id)
        assert checkout is not None
        by_proxy = actor.via_assignment_id is not None
        recorder.record(
            session, for_actor(AuditEvent.CHECKOUT_CREATED, via_assignment=by_proxy), actor=actor,
            outcome=Outcome.FAILURE, reason=reason,
            owner=OwnerRef(checkout.owner_type, checkout.owner_id),
            resource=Resource("checkout_session", checkout.id),
            idempotency_key=checkout.idempotency_key,
            data={"plan": checkout.plan_code, "status_code": error.status_code})


async def open_portal(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                      actor: Actor, owner: OwnerRef,
                      return_url: str | None = None) -> PortalSessionInfo:
    """A customer-portal link where the owner manages cards and invoices on Stripe's side."""
    return_url = check_redirect(return_url, settings, field="return_url")
    async with db.unit_of_work() as session:
        customer = await find_customer(session, owner)
        display = None if customer is not None else await accounts.owner_display(session, owner)
    customer_created = False
    if customer is None:
        assert display is not None
        customer, customer_created = await ensure_customer(db, gateway, owner=owner,
                                                           display=display)
    info = await gateway.create_portal_session(
        customer_id=customer.stripe_customer_id,
        return_url=return_url or f"{settings.public_base_url.rstrip('/')}/billing")
    async with db.unit_of_work() as session:
        recorder.record(session, AuditEvent.PORTAL_ACCESSED, actor=actor, owner=owner,
                        resource=Resource("stripe_customer", customer.id),
                        stripe=StripeRefs(customer_id=customer.stripe_customer_id),
                        data={"portal_session_id": info.id, "customer_created": customer_created})
    return info


