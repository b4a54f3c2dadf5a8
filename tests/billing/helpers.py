"""Helpers that billing tests share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import stripe

from billwatch import money
from billwatch.accounts.models import User
from billwatch.payments import standins
from tests.support import Factory, People, keyed


@dataclass(frozen=True, slots=True)
class RenewalInvoice:
    """The next-period invoice the peer created (and charged, unless collection is paused)."""

    invoice_id: str | None
    amount_due_cents: int
    amount_paid_cents: int
    charge_id: str | None
    collection_paused: str | None


async def standin_renewal(client: stripe.StripeClient, subscription_id: str) -> RenewalInvoice:
    """Stripe's renewal of ``subscription_id``, played on the local peer.

    The peer cannot hold a discount or a pause on a subscription, so this applies the ones the
    gateway's stand-in recorded on the customer: a paused subscription is not charged, a
    discounted one gets the coupon's amount off as a negative invoice item (Stripe computes it
    itself in production); then the peer creates the invoice and charges the card.
    """
    sub = (await client.v1.subscriptions.retrieve_async(subscription_id)).to_dict()
    customer_id = str(sub["customer"])
    metadata = (await client.v1.customers.retrieve_async(customer_id)).to_dict().get("metadata") or {}
    pause = metadata.get(standins.pause_key(subscription_id)) or None
    if pause is not None:
        return RenewalInvoice(None, 0, 0, None, str(pause))
    plan = sub["items"]["data"][0]["plan"]
    coupon_id = metadata.get(standins.discount_key(subscription_id)) or None
    if coupon_id is not None:
        coupon = (await client.v1.coupons.retrieve_async(str(coupon_id))).to_dict()
        amount, percent = int(plan["amount"]), coupon.get("percent_off")
        off = (money.divide_half_up(amount * int(percent), money.PERCENT) if percent is not None
               else min(int(coupon.get("amount_off") or 0), amount))
        if off:
            await client.v1.invoice_items.create_async(params={
                "customer": customer_id, "subscription": subscription_id, "amount": -off,
                "currency": str(plan["currency"]), "description": f"coupon {coupon_id}"})
    invoice = await client.v1.invoices.create_async(
        params={"customer": customer_id, "subscription": subscription_id})
    paid = (await client.v1.invoices.pay_async(str(invoice.id))).to_dict()
    charge = paid.get("charge")
    return RenewalInvoice(str(paid["id"]), int(paid["amount_due"]), int(paid["amount_paid"]),
                          str(charge["id"]) if isinstance(charge, dict) else charge, None)


async def request_refund(client: httpx.AsyncClient, factory: Factory, admin: User,
                         transaction_id: uuid.UUID, body: dict[str, Any]) -> httpx.Response:
    """``admin`` asks for a refund of the transaction, with a fresh ``Idempotency-Key``."""
    return await client.post(f"/admin/transactions/{transaction_id}/refund",
                             headers=keyed(factory.headers(admin)), json=body)


async def create_override(client: httpx.AsyncClient, factory: Factory, people: People, kind: str,
                          **terms: object) -> httpx.Response:
    """The admin asks for an override of ``kind`` for the people's owner."""
    return await client.post("/admin/overrides", headers=factory.headers(people.admin), json={
        **people.owner_body, "kind": kind, "reason": "financial hardship", **terms})
