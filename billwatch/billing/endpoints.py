"""Billing routes for owners, their proxies and admins: parse, authorize, call one service."""

from __future__ import annotations

import uuid

from fastapi import Request, Response, status

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import OwnerType
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.billing import cancellations, checkout, overrides, refunds, subscriptions
from billwatch.billing.schemas import (
    AccountAdminOut,
    AccountOut,
    CancelRequest,
    CheckoutOut,
    CheckoutRequest,
    FreeGrantRequest,
    OverrideAdminOut,
    OverrideOut,
    OverrideRequest,
    PortalOut,
    PortalRequest,
    RefundRequest,
    RevokeRequest,
    SubscriptionOut,
    TransactionAdminOut,
    TransactionOut,
)
from billwatch.db import Database
from billwatch.http import (
    AdminActor,
    AuditedRouter,
    CurrentActor,
    DatabaseDep,
    GatewayDep,
    SessionDep,
    SettingsDep,
    audited,
    phased,
)
from billwatch.idempotency import RequiredIdempotencyKey
from billwatch.managers.service import Purpose, authorize_owner

router = AuditedRouter(prefix="/billing", tags=["billing"])
admin_router = AuditedRouter(prefix="/admin", tags=["admin"])


async def owner_access(request: Request, session: SessionDep, actor: Actor, owner: OwnerRef,
                       purpose: Purpose) -> Actor:
    """Authorize ``actor`` for ``owner``; the owner is remembered for a failure audit row."""
    request.state.audit_owner = owner
    allowed = await authorize_owner(session, actor, owner, purpose=purpose)
    request.state.actor = allowed
    return allowed


async def owner_access_phased(request: Request, db: Database, actor: Actor, owner: OwnerRef,
                              purpose: Purpose) -> Actor:
    """:func:`owner_access` for a phased route, in a short transaction of its own."""
    async with db.unit_of_work() as session:
        return await owner_access(request, session, actor, owner, purpose)


@router.post("/checkout", status_code=status.HTTP_201_CREATED, response_model=CheckoutOut,
             openapi_extra=phased(AuditEvent.CHECKOUT_CREATED),
             responses={200: {"model": CheckoutOut,
                              "description": "The owner's open checkout for this plan, reused"}})
async def create_checkout(body: CheckoutRequest, request: Request, response: Response,
                          db: DatabaseDep, actor: CurrentActor, gateway: GatewayDep,
                          settings: SettingsDep) -> CheckoutOut:
    """Start a Stripe Checkout for an owner (as the owner, its proxy, or an admin).

    An owner has at most one open checkout: asking again for the same plan returns it (200);
    another plan, or one still being opened, is a 409 naming it.
    """
    owner = OwnerRef(body.owner_type, body.owner_id)
    actor = await owner_access_phased(request, db, actor, owner, Purpose.CHECKOUT)
    result = await checkout.create_checkout(
        db, gateway, settings, actor=actor, owner=owner, plan_code=body.plan_code,
        success_url=str(body.success_url) if body.success_url else None,
        cancel_url=str(body.cancel_url) if body.cancel_url else None)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return CheckoutOut.model_validate(result.checkout)


@router.get("/owners/{owner_type}/{owner_id}", response_model=AccountAdminOut | AccountOut,
            openapi_extra=audited(AuditEvent.SUBSCRIPTION_VIEWED))
async def read_account(owner_type: OwnerType, owner_id: uuid.UUID, request: Request,
                       session: SessionDep, actor: CurrentActor) -> AccountAdminOut | AccountOut:
    """An owner's subscriptions, latest transactions and overrides; admins also see why."""
    owner = OwnerRef(owner_type, owner_id)
    actor = await owner_access(request, session, actor, owner, Purpose.READ)
    account = await subscriptions.read_account(session, actor=actor, owner=owner)
    subscription_rows = [SubscriptionOut.model_validate(s) for s in account.subscriptions]
    if actor.is_admin:
        return AccountAdminOut(
            owner_type=owner.type, owner_id=owner.id, subscriptions=subscription_rows,
            transactions=[TransactionAdminOut.model_validate(t) for t in account.transactions],
            overrides=[OverrideAdminOut.model_validate(o) for o in account.overrides])
    return AccountOut(
        owner_type=owner.type, owner_id=owner.id, subscriptions=subscription_rows,
        transactions=[TransactionOut.model_validate(t) for t in account.transactions],
        overrides=[OverrideOut.model_validate(o) for o in account.overrides])


@router.post("/subscriptions/{subscription_id}/cancel", response_model=SubscriptionOut,
             openapi_extra=phased(AuditEvent.SUBSCRIPTION_CANCELLED))
async def cancel_subscription(subscription_id: uuid.UUID, body: CancelRequest, request: Request,
                              db: DatabaseDep, actor: CurrentActor,
                              gateway: GatewayDep) -> SubscriptionOut:
    """Cancel at period end (default) or immediately; concurrent cancels reach Stripe once."""
    request.state.audit_resource = Resource("subscription", subscription_id)
    async with db.unit_of_work() as session:
        subscription = await subscriptions.get_subscription(session, subscription_id)
        owner = OwnerRef(subscription.owner_type, subscription.owner_id)
        actor = await owner_access(request, session, actor, owner, Purpose.CANCEL)
    cancelled = await cancellations.cancel_subscription(
        db, gateway, actor=actor, subscription_id=subscription_id,
        at_period_end=body.at_period_end, reason=body.reason)
    return SubscriptionOut.model_validate(cancelled)


@router.post("/portal", response_model=PortalOut,
             openapi_extra=phased(AuditEvent.PORTAL_ACCESSED))
async def open_portal(body: PortalRequest, request: Request, db: DatabaseDep,
                      actor: CurrentActor, gateway: GatewayDep, settings: SettingsDep) -> PortalOut:
    """A Stripe customer-portal link for the owner (not for proxies)."""
    owner = OwnerRef(body.owner_type, body.owner_id)
    actor = await owner_access_phased(request, db, actor, owner, Purpose.PORTAL)
    info = await checkout.open_portal(db, gateway, settings, actor=actor, owner=owner,
                                      return_url=str(body.return_url) if body.return_url else None)
    return PortalOut(id=info.id, url=info.url)


@admin_router.post("/transactions/{transaction_id}/refund", status_code=status.HTTP_201_CREATED,
                   response_model=TransactionAdminOut,
                   openapi_extra=phased(AuditEvent.REFUND_ISSUED, idempotency_key_required=True))
async def refund_transaction(transaction_id: uuid.UUID, body: RefundRequest, request: Request,
                             db: DatabaseDep, actor: AdminActor, client_key: RequiredIdempotencyKey,
                             gateway: GatewayDep) -> TransactionAdminOut:
    """Refund all (no amount) or part of a payment; requires an ``Idempotency-Key``."""
    request.state.audit_resource = Resource("transaction", transaction_id)
    refund = await refunds.issue_refund(db, gateway, actor=actor, transaction_id=transaction_id,
                                        amount_cents=body.amount_cents, reason=body.reason,
                                        note=body.note, client_key=client_key)
    return TransactionAdminOut.model_validate(refund)


@admin_router.post("/free-grants", status_code=status.HTTP_201_CREATED, response_model=OverrideAdminOut,
                   openapi_extra=audited(AuditEvent.FREE_SUBSCRIPTION_GRANTED))
async def grant_free(body: FreeGrantRequest, request: Request, session: SessionDep,
                     actor: AdminActor, settings: SettingsDep) -> OverrideAdminOut:
    """Grant a free subscription for N months, or with no end."""
    owner = OwnerRef(body.owner_type, body.owner_id)
    request.state.audit_owner = owner
    override = await overrides.grant_free_subscription(
        session, settings, actor=actor, owner=owner, plan_code=body.plan_code,
        months=body.months, reason=body.reason)
    return OverrideAdminOut.model_validate(override)


@admin_router.post("/overrides", status_code=status.HTTP_201_CREATED, response_model=OverrideAdminOut,
                   openapi_extra=phased(AuditEvent.OVERRIDE_CREATED))
async def create_override(body: OverrideRequest, request: Request, db: DatabaseDep,
                          actor: AdminActor, gateway: GatewayDep,
                          settings: SettingsDep) -> OverrideAdminOut:
    """Create a discount or payment exemption, applied at Stripe before it is answered."""
    owner = OwnerRef(body.owner_type, body.owner_id)
    request.state.audit_owner = owner
    override = await overrides.create_override(
        db, gateway, settings, actor=actor, owner=owner, kind=body.kind, reason=body.reason,
        percent_off=body.percent_off, amount_off_cents=body.amount_off_cents,
        plan_code=body.plan_code, ends_at=body.ends_at)
    return OverrideAdminOut.model_validate(override)


@admin_router.post("/overrides/{override_id}/revoke", response_model=OverrideAdminOut,
                   openapi_extra=phased(AuditEvent.OVERRIDE_REVOKED))
async def revoke_override(override_id: uuid.UUID, body: RevokeRequest, request: Request,
                          db: DatabaseDep, actor: AdminActor,
                          gateway: GatewayDep) -> OverrideAdminOut:
    """Revoke an override now (removed at Stripe first); a concurrent second revoke is 409."""
    request.state.audit_resource = Resource("billing_override", override_id)
    override = await overrides.revoke_override(db, gateway, actor=actor, override_id=override_id,
                                               reason=body.reason)
    return OverrideAdminOut.model_validate(override)
