"""Stripe events in the current API shape, built from Stripe's published fixtures, signed as Stripe does.

localstripe sends events in an older shape and not at all for ``customer.subscription.updated``,
``invoice.payment_failed``, ``charge.refunded``, renewals or Checkout. These builders start from
the objects in ``data/stripe_current_shapes.json`` and override what a test controls.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import string
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tests.support import TEST_WEBHOOK_SECRET

DATA = Path(__file__).parent / "data" / "stripe_current_shapes.json"


@cache
def _shapes() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DATA.read_text())
    return loaded


def shape(name: str) -> dict[str, Any]:
    """A fresh deep copy of one published object (``invoice``, ``subscription``...)."""
    return copy.deepcopy(_shapes()[name])


_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id in Stripe's base-62 style; hex ids would now and then hold a card-length digit run."""
    return f"{prefix}_test{''.join(secrets.choice(_ID_ALPHABET) for _ in range(24))}"


def now() -> int:
    return int(time.time())


def sign(body: bytes, *, secrets: Sequence[str] = (TEST_WEBHOOK_SECRET,),
         timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header: ``t=<time>,v1=<HMAC-SHA256(secret, "<time>.<body>")>`` per secret."""
    moment = now() if timestamp is None else timestamp
    signed = f"{moment}.".encode() + body
    parts = [f"t={moment}"]
    parts += [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, indent=2).encode()


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None,
          event_id: str | None = None) -> dict[str, Any]:
    base = shape("event")
    base.update(id=event_id or new_id("evt"), type=event_type, api_version="2025-03-31.basil",
                created=now() if created is None else created, data={"object": obj},
                pending_webhooks=1, livemode=False)
    return base


def subscription(*, sub_id: str, customer: str, price: str, status: str = "active",
                 period: tuple[int, int] | None = None, cancel_at_period_end: bool = False,
                 metadata: dict[str, str] | None = None, canceled_at: int | None = None,
                 ended_at: int | None = None) -> dict[str, Any]:
    """A subscription as the current API sends it: period and price on the item."""
    sub = shape("subscription")
    start, end = period or (now(), now() + 30 * 86400)
    item = sub["items"]["data"][0]
    item.update(subscription=sub_id, current_period_start=start, current_period_end=end)
    item["price"]["id"] = price
    item.pop("plan", None)
    sub.update(id=sub_id, customer=customer, status=status, metadata=metadata or {},
               cancel_at_period_end=cancel_at_period_end, cancel_at=None, canceled_at=canceled_at,
               ended_at=ended_at, trial_start=None, trial_end=None, start_date=start,
               created=start, latest_invoice=None, pending_update=None)
    sub["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    return sub


def invoice(*, invoice_id: str, customer: str, subscription_id: str | None, price: str,
            amount: int, paid: bool, attempt_count: int = 1, currency: str = "usd",
            billing_reason: str = "subscription_cycle", payment_intent: str | dict[str, Any] | None = None,
            next_payment_attempt: int | None = None) -> dict[str, Any]:
    """An invoice as the current API sends it: no top-level subscription/charge/payment_intent."""
    inv = shape("invoice")
    for legacy in ("subscription", "charge", "payment_intent"):
        inv.pop(legacy, None)
    line = inv["lines"]["data"][0]
    line.update(invoice=invoice_id, amount=amount, currency=currency, subscription=None,
                pricing={"type": "price_details", "unit_amount_decimal": str(amount),
                         "price_details": {"price": price, "product": "prod_test"}},
                parent={"type": "subscription_item_details",
                        "subscription_item_details": {"subscription": subscription_id,
                                                      "subscription_item": "si_test",
                                                      "invoice_item": None, "proration": False,
                                                      "proration_details": None}})
    inv.update(id=invoice_id, customer=customer, currency=currency, amount_due=amount,
               amount_paid=amount if paid else 0, amount_remaining=0 if paid else amount,
               attempt_count=attempt_count, attempted=True, billing_reason=billing_reason,
               status="paid" if paid else "open", total=amount, subtotal=amount,
               next_payment_attempt=next_payment_attempt, last_finalization_error=None,
               parent={"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"subscription": subscription_id, "metadata": {}}})
    if payment_intent is not None:
        inv["payments"] = {"object": "list", "has_more": False, "data": [{
            "object": "invoice_payment", "id": new_id("inpay"), "invoice": invoice_id,
            "is_default": True, "status": "paid" if paid else "open",
            "payment": {"type": "payment_intent", "payment_intent": payment_intent}}]}
    return inv


def declined_payment_intent(*, pi_id: str, customer: str, amount: int, code: str = "card_declined",
                            decline_code: str = "insufficient_funds") -> dict[str, Any]:
    """An expanded payment intent whose last attempt the issuer declined."""
    pi = shape("payment_intent")
    pi.update(id=pi_id, customer=customer, amount=amount, status="requires_payment_method",
              client_secret=None,
              last_payment_error={"type": "card_error", "code": code, "decline_code": decline_code,
                                  "message": "Your card has insufficient funds."})
    return pi


def charge(*, charge_id: str, customer: str, payment_intent: str | None, amount: int,
           amount_refunded: int, refunds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A charge; the current API leaves ``refunds`` out unless it is expanded."""
    ch = shape("charge")
    ch.update(id=charge_id, customer=customer, payment_intent=payment_intent, amount=amount,
              amount_captured=amount, amount_refunded=amount_refunded,
              refunded=amount_refunded >= amount, captured=True, paid=True, status="succeeded")
    ch.pop("source", None)
    if refunds is None:
        ch.pop("refunds", None)
    else:
        ch["refunds"] = {"object": "list", "data": refunds, "has_more": False,
                         "url": f"/v1/charges/{charge_id}/refunds"}
    return ch


def refund(*, refund_id: str, charge_id: str, amount: int, reason: str | None = None,
           metadata: dict[str, str] | None = None) -> dict[str, Any]:
    re = shape("refund")
    re.update(id=refund_id, charge=charge_id, amount=amount, reason=reason,
              metadata=metadata or {}, status="succeeded", created=now())
    return re


def checkout_session(*, session_id: str, customer: str, subscription_id: str,
                     metadata: dict[str, str], amount: int) -> dict[str, Any]:
    cs = shape("checkout.session")
    cs.update(id=session_id, customer=customer, subscription=subscription_id, mode="subscription",
              status="complete", payment_status="paid", metadata=metadata, amount_total=amount,
              amount_subtotal=amount, currency="usd", payment_intent=None, url=None,
              client_reference_id=metadata.get("billwatch_checkout_id"))
    return cs
