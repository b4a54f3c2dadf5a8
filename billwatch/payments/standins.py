"""A narrow stand-in for what our local Stripe peer lacks: Checkout, portal, discounts, pauses.

localstripe implements customers, plans, subscriptions, invoices, payment intents and refunds,
but not Checkout Sessions, billing-portal sessions or Prices. For tests and the local run only,
the gateway builds those two session objects here, in Stripe's current shape (taken from
Stripe's published API fixtures in ``stripe_shapes.json``), instead of calling the API.

The peer also stores coupons but cannot put one on a subscription (``discounts``) and has no
``pause_collection`` (both answer 500; it ignores subscription metadata updates too). So the
stand-in records a subscription's discount and pause on its *customer's* metadata at the peer
(:func:`discount_key`, :func:`pause_key`); the billing tests read them back to play Stripe's
renewal at the peer. The coupons, invoices and charges are the peer's own; only attaching is
stood in.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import time
from functools import cache
from importlib import resources
from typing import Any

DISCOUNT_KEY = "bw_standin_coupon"
PAUSE_KEY = "bw_standin_pause"


@cache
def _shapes() -> dict[str, Any]:
    text = resources.files("billwatch.payments").joinpath("stripe_shapes.json").read_text()
    shapes: dict[str, Any] = json.loads(text)
    return shapes


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24).replace('-', 'x').replace('_', 'y')}"


def _id_for_key(prefix: str, idempotency_key: str) -> str:
    """The same id for the same idempotency key, as Stripe answers a retried request."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def checkout_session(*, customer: str, price: str, success_url: str, cancel_url: str,
                     metadata: dict[str, str], base_url: str, idempotency_key: str,
                     expires_at: int | None = None) -> dict[str, Any]:
    """A subscription-mode Checkout Session as Stripe would return it on creation.

    Like Stripe, it honours the requested ``expires_at`` and answers a retry with the same
    idempotency key with the same session.
    """
    session: dict[str, Any] = copy.deepcopy(_shapes()["checkout.session"])
    now = int(time.time())
    expires = expires_at if expires_at is not None else now + 24 * 3600
    session_id = _id_for_key("cs_test", idempotency_key)
    session.update(
        id=session_id, object="checkout.session", created=now, expires_at=expires,
        customer=customer, mode="subscription", status="open", payment_status="unpaid",
        success_url=success_url, cancel_url=cancel_url, metadata=dict(metadata),
        subscription=None, invoice=None, livemode=False,
        url=f"{base_url.rstrip('/')}/_standin/checkout/{session_id}",
        client_reference_id=metadata.get("billwatch_checkout_id"),
        line_items={"object": "list", "data": [{"price": {"id": price}, "quantity": 1}]},
    )
    return session


def portal_session(*, customer: str, return_url: str, base_url: str) -> dict[str, Any]:
    """A billing-portal session as Stripe would return it on creation."""
    session: dict[str, Any] = copy.deepcopy(_shapes()["billing_portal.session"])
    session_id = _new_id("bps")
    session.update(
        id=session_id, object="billing_portal.session", created=int(time.time()),
        customer=customer, return_url=return_url, livemode=False, flow=None,
        url=f"{base_url.rstrip('/')}/_standin/portal/{session_id}",
    )
    return session


def discount_key(subscription_id: str) -> str:
    """The customer-metadata key holding the coupon the stand-in put on a subscription."""
    return f"{DISCOUNT_KEY}_{subscription_id}"


def pause_key(subscription_id: str) -> str:
    """The customer-metadata key holding a subscription's ``pause_collection`` behavior."""
    return f"{PAUSE_KEY}_{subscription_id}"


def discount_id(subscription_id: str, coupon_id: str) -> str:
    """A stable id for the stand-in's discount (Stripe's would be ``di_...``)."""
    return f"di_standin_{subscription_id}_{coupon_id}"
