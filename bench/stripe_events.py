"""Signed ``invoice.payment_succeeded`` (or ``invoice.paid``) deliveries in Stripe's current shape.

Each event pays a fresh invoice of one of the seeded subscriptions, so every delivery does the
whole job (a new payment transaction, its audit rows, its metrics) and no two deliveries of a
run touch the same invoice.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Sequence
from typing import Any

from bench.loadgen import Request
from billwatch.config import Plan
from billwatch.demo import events


def _template(plan: Plan) -> dict[str, Any]:
    now = int(time.time())
    peer_invoice = {"id": "in_template", "customer": "cus_template", "subscription": "sub_template",
                    "total": plan.amount_cents, "status": "paid", "created": now,
                    "period_start": now, "period_end": now + 30 * 24 * 3600, "customer_email": None,
                    "lines": {"data": [{"id": "il_template", "subscription_item": "si_template",
                                        "period": {"start": now, "end": now + 30 * 24 * 3600}}]}}
    payment = {"id": "pi_template", "amount": plan.amount_cents, "currency": plan.currency,
               "created": now, "status": "succeeded", "customer": "cus_template"}
    return events.invoice(peer_invoice, plan, billing_reason="subscription_cycle",
                          payment=events.payment_intent(payment))


def invoice_paid_requests(subscriptions: Sequence[tuple[str, str]], plan: Plan, secret: str,
                          count: int, path: str = "/webhooks/stripe",
                          event_type: str = "invoice.payment_succeeded") -> list[Request]:
    """``count`` signed deliveries, round-robin over ``(stripe_subscription_id, customer_id)``."""
    template = _template(plan)
    requests = []
    for _, (sub_id, customer) in zip(range(count), itertools.cycle(subscriptions), strict=False):
        invoice = copy.deepcopy(template)
        invoice_id = events.new_id("in")  # random hex: no digit run that looks like a card
        invoice.update(id=invoice_id, customer=customer)
        invoice["parent"]["subscription_details"]["subscription"] = sub_id
        invoice["lines"]["data"][0]["parent"]["subscription_item_details"]["subscription"] = sub_id
        invoice["lines"]["data"][0]["invoice"] = invoice_id
        payment = invoice["payments"]["data"][0]
        payment.update(invoice=invoice_id, id=events.new_id("inpay"))
        payment["payment"]["payment_intent"] = events.new_id("pi")  # webhooks do not expand it
        signed = events.event(event_type, invoice, secret=secret)
        requests.append(Request("POST", path, signed.body.encode(),
                                {"Stripe-Signature": signed.signature,
                                 "Content-Type": "application/json"}))
    return requests
