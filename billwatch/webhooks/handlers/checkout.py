"""checkout.session.completed / expired: the owner paid on Stripe's page, or never did.

When a proxy opened the checkout, the subscription it created keeps that fact
(``managed_by_proxy_id``, ``manager_assignment_id``), taken from our checkout row or from the
metadata our checkout sent to Stripe. The subscription's own events may arrive before or after
this one: whichever comes first creates the row, the other fills in what it knows.

An expired session (abandoned, or expired early at Stripe) closes our checkout as ``expired`` at
once, so the owner may start another without waiting for our own ``expires_at``.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from billwatch.accounts.actor import OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.billing.checkout import intent_actor, settle_open
from billwatch.billing.customers import customer_key, find_customer
from billwatch.billing.models import (
    CheckoutSession,
    CheckoutStatus,
    StripeCustomer,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.payments.gateway import CheckoutSessionInfo
from billwatch.webhooks import shapes
from billwatch.webhooks.handlers.common import (
    STRIPE,
    EventContext,
    Handled,
    locked_subscription,
    owner_for_customer,
    uuid_or_none,
)
from billwatch.webhooks.handlers.subscriptions import insert_subscription, record_created, set_manager


async def checkout_completed(ctx: EventContext) -> Handled:
    """Mark our checkout complete and link the subscription it started to its owner and proxy."""
    session_obj = ctx.obj
    session_id = shapes.required_str(session_obj, "id")
    customer_id = shapes.ref(session_obj.get("customer"))
    stripe_sub_id = shapes.ref(session_obj.get("subscription"))
    meta = shapes.metadata(session_obj)
    refs = ctx.refs(customer_id=customer_id, subscription_id=stripe_sub_id)
    checkout = (await ctx.session.scalars(
        select(CheckoutSession).where(CheckoutSession.stripe_session_id == session_id)
        .with_for_update())).first()
    if checkout is None:
        checkout = await _adopt_pending(ctx, session_id, customer_id, meta)
    owner = (OwnerRef(checkout.owner_type, checkout.owner_id) if checkout is not None
             else await owner_for_customer(ctx.session, customer_id, meta))
    if owner is None:
        return Handled.ignored(f"checkout {session_id} was not opened by billwatch", refs=refs)
    if checkout is not None:
        checkout.status = CheckoutStatus.COMPLETE
        if checkout.manager_assignment_id is not None:
            meta.setdefault("billwatch_proxy_id", str(checkout.created_by_user_id))
            meta.setdefault("billwatch_assignment_id", str(checkout.manager_assignment_id))
    plan_code = checkout.plan_code if checkout is not None else meta.get("billwatch_plan")
    subscription = await _link_subscription(ctx, session_obj, owner, stripe_sub_id, plan_code, meta)
    recorder.record(
        ctx.session, AuditEvent.CHECKOUT_COMPLETED, actor=STRIPE, owner=owner,
        resource=Resource("checkout_session", checkout.id if checkout is not None else session_id),
        stripe=refs,
        data={"plan": plan_code, "stripe_session_id": session_id, "mode": session_obj.get("mode"),
              "payment_status": session_obj.get("payment_status"),
              "amount_total": session_obj.get("amount_total"),
              "currency": session_obj.get("currency"),
              "subscription_id": str(subscription.id) if subscription else None,
              "managed_by_proxy_id": meta.get("billwatch_proxy_id"),
              "manager_assignment_id": meta.get("billwatch_assignment_id")})
    return Handled(owner=owner, refs=refs,
                   data={"checkout_id": str(checkout.id) if checkout is not None else None})


async def checkout_expired(ctx: EventContext) -> Handled:
    """Close our checkout whose Stripe session expired unpaid, freeing the owner for a new one."""
    session_id = shapes.required_str(ctx.obj, "id")
    customer_id = shapes.ref(ctx.obj.get("customer"))
    meta = shapes.metadata(ctx.obj)
    refs = ctx.refs(customer_id=customer_id)
    checkout = (await ctx.session.scalars(
        select(CheckoutSession).where(CheckoutSession.stripe_session_id == session_id)
        .with_for_update())).first()
    if checkout is None:
        checkout = await _adopt_pending(ctx, session_id, customer_id, meta)
    if checkout is None:
        return Handled.ignored(f"checkout {session_id} was not opened by billwatch", refs=refs)
    owner = OwnerRef(checkout.owner_type, checkout.owner_id)
    # Compare-and-set: the lazy expiry of a new checkout request may have closed it first.
    result = await ctx.session.execute(
        update(CheckoutSession).where(CheckoutSession.id == checkout.id,
                                      CheckoutSession.status == CheckoutStatus.OPEN)
        .values(status=CheckoutStatus.EXPIRED)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return Handled.ignored(f"checkout {checkout.id} is already {checkout.status.value}",
                               refs=refs, owner=owner)
    checkout.status = CheckoutStatus.EXPIRED
    recorder.record(
        ctx.session, AuditEvent.CHECKOUT_EXPIRED, actor=STRIPE, owner=owner,
        resource=Resource("checkout_session", checkout.id), stripe=refs,
        data={"plan": checkout.plan_code, "stripe_session_id": session_id,
              "expires_at": checkout.expires_at.isoformat() if checkout.expires_at else None,
              "stripe_expires_at": ctx.obj.get("expires_at"), "from": ctx.type})
    return Handled(owner=owner, refs=refs, data={"checkout_id": str(checkout.id)})


async def _adopt_pending(ctx: EventContext, session_id: str, customer_id: str | None,
                         meta: dict[str, str]) -> CheckoutSession | None:
    """Our checkout still pending (its settlement was lost): settle it from this event.

    Found through ``metadata.billwatch_checkout_id``; the ``billing.checkout.created`` row it
    writes names the user who asked for the checkout, not Stripe.
    """
    checkout_id = uuid_or_none(meta.get("billwatch_checkout_id"))
    if checkout_id is None:
        return None
    checkout = (await ctx.session.scalars(
        select(CheckoutSession).where(CheckoutSession.id == checkout_id).with_for_update())).first()
    if checkout is None or checkout.status is not CheckoutStatus.PENDING or customer_id is None:
        return checkout
    owner = OwnerRef(checkout.owner_type, checkout.owner_id)
    if await find_customer(ctx.session, owner) is None:
        ctx.session.add(StripeCustomer(id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
                                       stripe_customer_id=customer_id,
                                       idempotency_key=customer_key(owner)))
    return await settle_open(
        ctx.session, ctx.settings, checkout.id,
        CheckoutSessionInfo(session_id, str(ctx.obj.get("url") or ""), customer_id),
        actor=await intent_actor(ctx.session, checkout), customer_created=False,
        adopted_from=ctx.type)


async def _link_subscription(ctx: EventContext, session_obj: dict[str, Any], owner: OwnerRef,
                             stripe_sub_id: str | None, plan_code: str | None,
                             meta: dict[str, str]) -> Subscription | None:
    if stripe_sub_id is None:
        return None
    row = await locked_subscription(ctx.session, stripe_sub_id)
    if row is not None:
        await set_manager(ctx, row, meta)
        return row
    if plan_code is None or ctx.settings.plan(plan_code) is None:
        return None  # the subscription's own event will create the row
    paid = session_obj.get("payment_status") in ("paid", "no_payment_required")
    # No timestamp stamp: this is a placeholder, and any subscription event may overwrite it.
    row = Subscription(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, plan_code=plan_code,
        status=SubscriptionStatus.ACTIVE if paid else SubscriptionStatus.INCOMPLETE,
        source=SubscriptionSource.STRIPE, stripe_subscription_id=stripe_sub_id,
        stripe_customer_id=shapes.ref(session_obj.get("customer")))
    await set_manager(ctx, row, meta)
    existing = await insert_subscription(ctx, row)
    if existing is not None:
        await set_manager(ctx, existing, meta)
        return existing
    record_created(ctx, row, data={"from": "checkout.session.completed"})
    return row
