"""Stripe webhook events in Stripe's current shape, signed exactly as Stripe signs them.

localstripe sends real signed webhooks, but in an older API shape and only for what it models.
For everything else the demo (and the benchmarks) play Stripe's part: each event here is built
from a *real* object at the Stripe peer (the invoice, subscription and payment intent it holds)
and laid out as Stripe's current API writes it (``invoice.parent.subscription_details``,
``invoice.payments``, periods on subscription items, ``price`` on items), starting from Stripe's
published fixtures in ``stripe_shapes.json``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import stripe

from billwatch.config import Plan
from billwatch.payments import standins


@cache
def _shapes() -> dict[str, Any]:
    text = resources.files("billwatch.demo").joinpath("stripe_shapes.json").read_text()
    shapes: dict[str, Any] = json.loads(text)
    return shapes


def shape(name: str) -> dict[str, Any]:
    """A fresh copy of one fixture object."""
    return copy.deepcopy(_shapes()[name])


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def sign(payload: str, secret: str, *, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload``: ``t=<ts>,v1=<HMAC-SHA256 of "ts.payload">``."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


@dataclass(frozen=True, slots=True)
class SignedEvent:
    id: str
    type: str
    body: str
    signature: str


def event(event_type: str, obj: dict[str, Any], *, secret: str, created: int | None = None,
          previous_attributes: dict[str, Any] | None = None) -> SignedEvent:
    """Wrap ``obj`` in an event envelope and sign it; ``created`` orders events of one object."""
    envelope = shape("event")
    event_id = new_id("evt")
    envelope.update(id=event_id, type=event_type, created=created or int(time.time()),
                    api_version=stripe.api_version, livemode=False, pending_webhooks=1,
                    request={"id": None, "idempotency_key": None},
                    data={"object": obj, **({"previous_attributes": previous_attributes}
                                            if previous_attributes else {})})
    body = json.dumps(envelope, separators=(",", ":"))
    return SignedEvent(event_id, event_type, body, sign(body, secret))


# --- objects ---------------------------------------------------------------------------------

def checkout_session_completed(*, session_id: str, customer: str, subscription: str,
                               invoice: str | None, plan: Plan, metadata: dict[str, str],
                               base_url: str) -> dict[str, Any]:
    """The Checkout Session billwatch opened, as Stripe reports it once the customer paid."""
    session = standins.checkout_session(
        customer=customer, price=plan.stripe_price, success_url=f"{base_url}/billing/checkout/success",
        cancel_url=f"{base_url}/billing/checkout/cancelled", metadata=metadata, base_url=base_url,
        idempotency_key=f"checkout-completed:{session_id}")
    session.update(id=session_id, status="complete", payment_status="paid",
                   subscription=subscription, invoice=invoice, amount_subtotal=plan.amount_cents,
                   amount_total=plan.amount_cents, currency=plan.currency, url=None)
    return session


def subscription(peer_sub: dict[str, Any], plan: Plan, **changes: Any) -> dict[str, Any]:
    """A subscription in the current shape from the peer's (older-shape) subscription."""
    sub = shape("subscription")
    item = sub["items"]["data"][0]
    start, end = peer_sub["current_period_start"], peer_sub["current_period_end"]
    item.update(id=_first_item_id(peer_sub), subscription=peer_sub["id"], created=peer_sub["created"],
                current_period_start=start, current_period_end=end, metadata={})
    item["price"].update(id=plan.stripe_price, unit_amount=plan.amount_cents,
                         unit_amount_decimal=str(plan.amount_cents), currency=plan.currency,
                         product=f"prod_{plan.code}", created=peer_sub["created"], lookup_key=plan.code)
    item["price"]["recurring"].update(interval=plan.interval.value, interval_count=1)
    sub["items"]["url"] = f"/v1/subscription_items?subscription={peer_sub['id']}"
    sub.update(id=peer_sub["id"], customer=peer_sub["customer"], created=peer_sub["created"],
               start_date=peer_sub.get("start_date") or peer_sub["created"],
               billing_cycle_anchor=start, currency=plan.currency,
               status=peer_sub["status"], cancel_at_period_end=bool(peer_sub["cancel_at_period_end"]),
               cancel_at=end if peer_sub["cancel_at_period_end"] else None,
               canceled_at=peer_sub.get("canceled_at"), ended_at=peer_sub.get("ended_at"),
               latest_invoice=peer_sub.get("latest_invoice"), metadata=peer_sub.get("metadata") or {},
               default_payment_method=None, livemode=False)
    sub.update(changes)
    return sub


def _first_item_id(peer_sub: dict[str, Any]) -> str:
    items = peer_sub.get("items", {}).get("data") or [{}]
    return str(items[0].get("id") or new_id("si"))


def payment_intent(peer_pi: dict[str, Any], *, decline_code: str | None = None) -> dict[str, Any]:
    """A payment intent in the current shape; a failed one carries Stripe's decline reason."""
    pi = shape("payment_intent")
    charge = peer_pi.get("latest_charge")
    charge_id = charge.get("id") if isinstance(charge, dict) else charge
    pi.update(id=peer_pi["id"], amount=peer_pi["amount"], currency=peer_pi["currency"],
              customer=peer_pi.get("customer"), created=peer_pi["created"], latest_charge=charge_id,
              status=peer_pi["status"], payment_method=peer_pi.get("payment_method"),
              invoice=peer_pi.get("invoice"), client_secret=None,
              amount_received=peer_pi["amount"] if peer_pi["status"] == "succeeded" else 0,
              capture_method="automatic", canceled_at=None)
    error = peer_pi.get("last_payment_error")
    if error:
        pi["last_payment_error"] = {
            "type": "card_error", "code": error.get("code") or "card_declined",
            "decline_code": decline_code or error.get("decline_code") or "generic_decline",
            "message": error.get("message") or "Your card was declined.", "charge": charge_id}
    return pi


def invoice(peer_invoice: dict[str, Any], plan: Plan, *, billing_reason: str,
            payment: dict[str, Any] | None, attempt_count: int = 1,
            next_payment_attempt: int | None = None) -> dict[str, Any]:
    """An invoice in the current shape (``parent.subscription_details``, ``payments``).

    ``payment`` is the (expanded) payment intent of this attempt: Stripe lets an API read
    expand ``payments.data.payment.payment_intent``, and the decline reason lives there.
    """
    inv = shape("invoice")
    paid = peer_invoice["status"] == "paid"
    sub_id = peer_invoice.get("subscription")
    line = inv["lines"]["data"][0]
    peer_line = (peer_invoice.get("lines", {}).get("data") or [{}])[0]
    line.update(id=peer_line.get("id") or new_id("il"), invoice=peer_invoice["id"],
                amount=peer_invoice["total"], subtotal=peer_invoice["total"], currency=plan.currency,
                description=f"1 x {plan.name}", period=peer_line.get("period") or {
                    "start": peer_invoice["period_start"], "end": peer_invoice["period_end"]})
    line["parent"]["subscription_item_details"].update(
        subscription=sub_id, subscription_item=peer_line.get("subscription_item"))
    line["pricing"]["price_details"].update(price=plan.stripe_price, product=f"prod_{plan.code}")
    line["pricing"]["unit_amount_decimal"] = str(plan.amount_cents)
    inv["lines"]["url"] = f"/v1/invoices/{peer_invoice['id']}/lines"
    inv["parent"]["subscription_details"]["subscription"] = sub_id
    inv["payments"]["data"] = [_invoice_payment(peer_invoice, payment, paid)] if payment else []
    total = peer_invoice["total"]
    inv.update(id=peer_invoice["id"], customer=peer_invoice["customer"],
               customer_email=peer_invoice.get("customer_email"), created=peer_invoice["created"],
               currency=plan.currency, amount_due=total, amount_paid=total if paid else 0,
               amount_remaining=0 if paid else total, subtotal=total, total=total,
               subtotal_excluding_tax=total, total_excluding_tax=total,
               attempt_count=attempt_count, attempted=True, billing_reason=billing_reason,
               status="paid" if paid else "open", period_start=peer_invoice["period_start"],
               period_end=peer_invoice["period_end"], effective_at=peer_invoice["created"],
               due_date=None, next_payment_attempt=None if paid else next_payment_attempt,
               number=f"BW-{peer_invoice['id'][-8:].upper()}", webhooks_delivered_at=None,
               status_transitions={"finalized_at": peer_invoice["created"], "marked_uncollectible_at": None,
                                   "paid_at": int(time.time()) if paid else None, "voided_at": None},
               livemode=False, auto_advance=not paid, subscription=None)
    inv.pop("subscription", None)  # the current shape names it under parent only
    return inv


def _invoice_payment(peer_invoice: dict[str, Any], payment: dict[str, Any],
                     paid: bool) -> dict[str, Any]:
    entry = shape("invoice_payment")
    entry.update(id=new_id("inpay"), invoice=peer_invoice["id"], currency=payment["currency"],
                 amount_requested=payment["amount"], amount_paid=payment["amount"] if paid else None,
                 created=payment["created"], livemode=False, is_default=True,
                 status="paid" if paid else "open",
                 status_transitions={"canceled_at": None,
                                     "paid_at": int(time.time()) if paid else None},
                 payment={"type": "payment_intent", "payment_intent": payment})
    return entry


def charge_refunded(peer_charge: dict[str, Any]) -> dict[str, Any]:
    """A charge after a refund, as ``charge.refunded`` carries it (with the peer's refunds)."""
    ch = shape("charge")
    refunds = []
    for peer_refund in peer_charge.get("refunds", {}).get("data") or []:
        refund = shape("refund")
        refund.update(id=peer_refund["id"], amount=peer_refund["amount"], charge=peer_charge["id"],
                      payment_intent=peer_charge.get("payment_intent"),
                      currency=peer_refund["currency"], created=peer_refund["created"],
                      status=peer_refund.get("status") or "succeeded", reason=None,
                      metadata=peer_refund.get("metadata") or {}, customer=peer_charge.get("customer"))
        refunds.append(refund)
    refunded = int(peer_charge.get("amount_refunded") or 0)
    ch.update(id=peer_charge["id"], amount=peer_charge["amount"], amount_captured=peer_charge["amount"],
              amount_refunded=refunded, refunded=refunded >= peer_charge["amount"],
              currency=peer_charge["currency"], customer=peer_charge.get("customer"),
              payment_intent=peer_charge.get("payment_intent"), created=peer_charge["created"],
              invoice=None, paid=True, captured=True, status="succeeded", description=None,
              payment_method=peer_charge.get("payment_method"), balance_transaction=None,
              refunds={"object": "list", "data": refunds, "has_more": False,
                       "url": f"/v1/charges/{peer_charge['id']}/refunds"})
    ch["billing_details"]["name"] = None
    return ch
