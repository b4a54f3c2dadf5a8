"""Checkout and the customer portal: the two ways an owner reaches Stripe's hosted pages."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, for_actor
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.customers import ensure_customer
from billwatch.billing.models import CheckoutSession, CheckoutStatus
from billwatch.billing.subscriptions import ensure_no_live_subscription, require_plan
from billwatch.config import Settings
from billwatch.db import after_commit
from billwatch.hardening import check_redirect
from billwatch.metrics import billing as billing_metrics
from billwatch.payments.gateway import PaymentsGateway, PortalSessionInfo


async def create_checkout(session: AsyncSession, gateway: PaymentsGateway, settings: Settings, *,
                          actor: Actor, owner: OwnerRef, plan_code: str,
                          success_url: str | None = None,
                          cancel_url: str | None = None) -> CheckoutSession:
    """Open a Stripe Checkout session for ``owner`` to subscribe to ``plan_code``."""
    success_url = check_redirect(success_url, settings, field="success_url")  # 422: no open
    cancel_url = check_redirect(cancel_url, settings, field="cancel_url")  # redirects
    plan = require_plan(settings, plan_code)
    await ensure_no_live_subscription(session, owner)
    customer, customer_created = await ensure_customer(session, gateway, owner=owner)
    checkout_id = uuid.uuid4()
    key = f"checkout:{checkout_id}"
    metadata = {
        "billwatch_checkout_id": str(checkout_id),
        "billwatch_owner_type": owner.type.value,
        "billwatch_owner_id": str(owner.id),
        "billwatch_plan": plan.code,
    }
    if actor.via_assignment_id is not None:
        metadata["billwatch_proxy_id"] = str(actor.user_id)
        metadata["billwatch_assignment_id"] = str(actor.via_assignment_id)
    base = settings.public_base_url.rstrip("/")
    info = await gateway.create_checkout_session(
        customer_id=customer.stripe_customer_id, plan=plan,
        success_url=success_url or f"{base}/billing/checkout/success",
        cancel_url=cancel_url or f"{base}/billing/checkout/cancelled",
        metadata=metadata, idempotency_key=key)
    checkout = CheckoutSession(
        id=checkout_id, owner_type=owner.type, owner_id=owner.id, plan_code=plan.code,
        status=CheckoutStatus.OPEN, stripe_session_id=info.id,
        stripe_customer_id=customer.stripe_customer_id, url=info.url,
        created_by_user_id=actor.user_id, manager_assignment_id=actor.via_assignment_id,
        idempotency_key=key)
    session.add(checkout)
    await session.flush()
    by_proxy = actor.via_assignment_id is not None
    recorder.record(
        session, for_actor(AuditEvent.CHECKOUT_CREATED, via_assignment=by_proxy), actor=actor,
        owner=owner, resource=Resource("checkout_session", checkout.id),
        stripe=StripeRefs(customer_id=customer.stripe_customer_id), idempotency_key=key,
        data={"plan": plan.code, "amount_cents": plan.amount_cents, "currency": plan.currency,
              "interval": plan.interval.value, "stripe_session_id": info.id,
              "customer_created": customer_created})
    after_commit(session, lambda: billing_metrics.checkout_created(
        owner.type.value, plan.code, by_proxy=by_proxy))
    return checkout


async def open_portal(session: AsyncSession, gateway: PaymentsGateway, settings: Settings, *,
                      actor: Actor, owner: OwnerRef,
                      return_url: str | None = None) -> PortalSessionInfo:
    """A customer-portal link where the owner manages cards and invoices on Stripe's side."""
    return_url = check_redirect(return_url, settings, field="return_url")
    customer, customer_created = await ensure_customer(session, gateway, owner=owner)
    info = await gateway.create_portal_session(
        customer_id=customer.stripe_customer_id,
        return_url=return_url or f"{settings.public_base_url.rstrip('/')}/billing")
    recorder.record(session, AuditEvent.PORTAL_ACCESSED, actor=actor, owner=owner,
                    resource=Resource("stripe_customer", customer.id),
                    stripe=StripeRefs(customer_id=customer.stripe_customer_id),
                    data={"portal_session_id": info.id, "customer_created": customer_created})
    return info
