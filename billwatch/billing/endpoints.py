"""Billing routes for owners, their proxies and admins: parse, depend on access, call one service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Response, status

from billwatch import access
from billwatch.access import AdminActor, AdminTarget, OwnerAccess, SubscriptionAccess
from billwatch.audit.events import AuditEvent
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
from billwatch.http import (
    AuditedRouter,
    DatabaseDep,
    GatewayDep,
    SessionDep,
    SettingsDep,
    audited,
    phased,
)
from billwatch.idempotency import RequiredIdempotencyKey
from billwatch.managers.service import Purpose

router = AuditedRouter(prefix="/billing", tags=["billing"])
admin_router = AuditedRouter(prefix="/admin", tags=["admin"])

CheckoutAccess = Annotated[OwnerAccess[CheckoutRequest], Depends(
    access.owner_in_body(CheckoutRequest, Purpose.CHECKOUT))]
PortalAccess = Annotated[OwnerAccess[PortalRequest], Depends(
    access.owner_in_body(PortalRequest, Purpose.PORTAL))]
AccountAccess = Annotated[OwnerAccess[None], Depends(access.owner_in_path(Purpose.READ))]
CancelAccess = Annotated[SubscriptionAccess[CancelRequest], Depends(
    access.subscription_in_path(CancelRequest, Purpose.CANCEL))]
RefundAccess = Annotated[AdminTarget[RefundRequest], Depends(
    access.admin_on("transaction", "transaction_id", RefundRequest))]
FreeGrantAccess = Annotated[OwnerAccess[FreeGrantRequest], Depends(
    access.admin_for_owner(FreeGrantRequest))]
OverrideAccess = Annotated[OwnerAccess[OverrideRequest], Depends(
    access.admin_for_owner(OverrideRequest))]
RevokeAccess = Annotated[AdminTarget[RevokeRequest], Depends(
    access.admin_on("billing_override", "override_id", RevokeRequest))]


@router.post("/checkout", status_code=status.HTTP_201_CREATED, response_model=CheckoutOut,
             openapi_extra=phased(AuditEvent.CHECKOUT_CREATED),
             responses={200: {"model": CheckoutOut,
                              "description": "The owner's open checkout for this plan, reused"}})
async def create_checkout(allowed: CheckoutAccess, response: Response, db: DatabaseDep,
                          gateway: GatewayDep, settings: SettingsDep) -> CheckoutOut:
    """Start a Stripe Checkout for an owner (as the owner, its proxy, or an admin).

    An owner has at most one open checkout: asking again for the same plan returns it (200);
    another plan, or one still being opened, is a 409 naming it.
    """
    body = allowed.body
    result = await checkout.create_checkout(
        db, gateway, settings, actor=allowed.actor, owner=allowed.owner, plan_code=body.plan_code,
        success_url=str(body.success_url) if body.success_url else None,
        cancel_url=str(body.cancel_url) if body.cancel_url else None)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return CheckoutOut.model_validate(result.checkout)


@router.get("/owners/{owner_type}/{owner_id}", response_model=AccountAdminOut | AccountOut,
            openapi_extra=audited(AuditEvent.SUBSCRIPTION_VIEWED))
async def read_account(allowed: AccountAccess, session: SessionDep) -> AccountAdminOut | AccountOut:
    """An owner's subscriptions, latest transactions and overrides; admins also see why."""
    actor, owner = allowed.actor, allowed.owner
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
async def cancel_subscription(allowed: CancelAccess, db: DatabaseDep,
                              gateway: GatewayDep) -> SubscriptionOut:
    """Cancel at period end (default) or immediately; concurrent cancels reach Stripe once."""
    cancelled = await cancellations.cancel_subscription(
        db, gateway, actor=allowed.actor, subscription_id=allowed.subscription_id,
        at_period_end=allowed.body.at_period_end, reason=allowed.body.reason)
    return SubscriptionOut.model_validate(cancelled)


@router.post("/portal", response_model=PortalOut,
             openapi_extra=phased(AuditEvent.PORTAL_ACCESSED))
async def open_portal(allowed: PortalAccess, db: DatabaseDep, gateway: GatewayDep,
                      settings: SettingsDep) -> PortalOut:
    """A Stripe customer-portal link for the owner (not for proxies)."""
    return_url = allowed.body.return_url
    info = await checkout.open_portal(db, gateway, settings, actor=allowed.actor,
                                      owner=allowed.owner,
                                      return_url=str(return_url) if return_url else None)
    return PortalOut(id=info.id, url=info.url)


@admin_router.post("/transactions/{transaction_id}/refund", status_code=status.HTTP_201_CREATED,
                   response_model=TransactionAdminOut,
                   openapi_extra=phased(AuditEvent.REFUND_ISSUED, idempotency_key_required=True))
async def refund_transaction(_: AdminActor, client_key: RequiredIdempotencyKey,
                             target: RefundAccess, db: DatabaseDep,
                             gateway: GatewayDep) -> TransactionAdminOut:
    """Refund all (no amount) or part of a payment; requires an ``Idempotency-Key``."""
    # ``_`` orders the checks: the admin (401/403), then the key (400), then the transaction.
    body = target.body
    refund = await refunds.issue_refund(db, gateway, actor=target.actor, transaction_id=target.id,
                                        amount_cents=body.amount_cents, reason=body.reason,
                                        note=body.note, client_key=client_key)
    return TransactionAdminOut.model_validate(refund)


@admin_router.post("/free-grants", status_code=status.HTTP_201_CREATED, response_model=OverrideAdminOut,
                   openapi_extra=audited(AuditEvent.FREE_SUBSCRIPTION_GRANTED))
async def grant_free(allowed: FreeGrantAccess, session: SessionDep,
                     settings: SettingsDep) -> OverrideAdminOut:
    """Grant a free subscription for N months, or with no end."""
    body = allowed.body
    override = await overrides.grant_free_subscription(
        session, settings, actor=allowed.actor, owner=allowed.owner, plan_code=body.plan_code,
        months=body.months, reason=body.reason)
    return OverrideAdminOut.model_validate(override)


@admin_router.post("/overrides", status_code=status.HTTP_201_CREATED, response_model=OverrideAdminOut,
                   openapi_extra=phased(AuditEvent.OVERRIDE_CREATED))
async def create_override(allowed: OverrideAccess, db: DatabaseDep, gateway: GatewayDep,
                          settings: SettingsDep) -> OverrideAdminOut:
    """Create a discount or payment exemption, applied at Stripe before it is answered."""
    body = allowed.body
    override = await overrides.create_override(
        db, gateway, settings, actor=allowed.actor, owner=allowed.owner, kind=body.kind,
        reason=body.reason, percent_off=body.percent_off, amount_off_cents=body.amount_off_cents,
        plan_code=body.plan_code, ends_at=body.ends_at)
    return OverrideAdminOut.model_validate(override)


@admin_router.post("/overrides/{override_id}/revoke", response_model=OverrideAdminOut,
                   openapi_extra=phased(AuditEvent.OVERRIDE_REVOKED))
async def revoke_override(target: RevokeAccess, db: DatabaseDep,
                          gateway: GatewayDep) -> OverrideAdminOut:
    """Revoke an override now (removed at Stripe first); a concurrent second revoke is 409."""
    override = await overrides.revoke_override(db, gateway, actor=target.actor,
                                               override_id=target.id, reason=target.body.reason)
    return OverrideAdminOut.model_validate(override)
