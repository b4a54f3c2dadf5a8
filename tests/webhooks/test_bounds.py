"""Signed events whose fields no column can hold are refused at the door: 400, nothing stored.

Each case takes one well-formed, signed ``invoice.payment_failed`` event and breaks one field as
a compromised or buggy sender could; the untouched event is accepted (the control), so each
refusal is the broken field's. Without these bounds PostgreSQL refuses the row (NUL in JSON,
an int64 overflow, an over-long id), the event is neither stored nor audited, and it answers
500 for ever.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from billwatch.db import Database
from billwatch.webhooks.bounds import MAX_TIMESTAMP, OutOfBounds, check_bounds
from billwatch.webhooks.signature import WebhookRejected, checked_event
from tests.support import SHARED_STRIPE_FIXTURES, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import drain_inbox
from tests.webhooks.test_verification import assert_rejected, baseline, post

Mutation = Callable[[dict[str, Any]], None]


def failed_invoice_event() -> dict[str, Any]:
    customer = se.new_id("cus")
    intent = se.declined_payment_intent(pi_id=se.new_id("pi"), customer=customer, amount=1500)
    invoice = se.invoice(invoice_id=se.new_id("in"), customer=customer,
                         subscription_id=se.new_id("sub"), price="billwatch_basic_monthly",
                         amount=1500, paid=False, payment_intent=intent)
    return se.event("invoice.payment_failed", invoice)


def obj(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = event["data"]["object"]
    return found


def intent_error(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = obj(event)["payments"]["data"][0]["payment"]["payment_intent"]
    return found["last_payment_error"]  # type: ignore[no-any-return]


CASES: list[tuple[str, Mutation, str]] = [
    ("created far past any datetime", lambda e: e.update(created=10**30), "created: Unix time"),
    ("created before 1970", lambda e: e.update(created=-1), "created: Unix time"),
    ("event id with NUL", lambda e: e.update(id="evt_\x00x"), "id: not a Stripe event id"),
    ("event id with a card number", lambda e: e.update(id="evt 4242 4242 4242 4242"),
     "id: not a Stripe event id"),
    ("event type with Rich markup", lambda e: e.update(type="[link=https://x.test]invoice.paid"),
     "type: not a Stripe event type"),
    ("amount past int64", lambda e: obj(e).update(amount_due=2**63),
     "data.object.amount_due: integer outside int64"),
    ("negative amount", lambda e: obj(e).update(amount_due=-1500),
     "data.object.amount_due: negative amount"),
    ("customer id past its column", lambda e: obj(e).update(customer="cus_" + "x" * 252),
     "data.object.customer: longer than 255"),
    ("customer id over two lines", lambda e: obj(e).update(customer="cus_a\ncus_b"),
     "data.object.customer: not a one-line value"),
    ("NUL in free text", lambda e: obj(e).update(description="thanks\x00"),
     "data.object.description: text cannot be stored: NUL"),
    ("lone surrogate in metadata", lambda e: obj(e).update(metadata={"note": "a\ud800b"}),
     "data.object.metadata.note: text cannot be stored: lone surrogate"),
    ("NUL in a key", lambda e: obj(e).update(metadata={"no\x00te": "b"}),
     "data.object.metadata.<key>: key cannot be stored"),
    ("attempt count past 32 bits", lambda e: obj(e).update(attempt_count=2**31),
     "data.object.attempt_count: attempt count"),
    ("decline code past its column", lambda e: intent_error(e).update(decline_code="x" * 81),
     "last_payment_error.decline_code: longer than 80"),
    ("currency not three letters", lambda e: obj(e).update(currency="usdollars"),
     "data.object.currency: currency is not three letters"),
    ("period end past year 9998", lambda e: obj(e).update(period_end=MAX_TIMESTAMP + 1),
     "data.object.period_end: Unix time"),
]


class TestRefused:
    @pytest.mark.parametrize(("mutate", "detail"), [(m, d) for _, m, d in CASES],
                             ids=[name for name, _, _ in CASES])
    async def test_is_400_with_the_field_path_nothing_stored_one_failure_row(
            self, mutate: Mutation, detail: str, client: httpx.AsyncClient,
            db: Database) -> None:
        event = failed_invoice_event()
        mutate(event)
        before, counted = await baseline(db, "malformed")
        body = se.encode(event)
        response = await post(client, body, se.sign(body))
        await assert_rejected(db, response, 400, "invalid_event_field", "malformed", before,
                              counted)
        assert detail in response.json()["detail"]
        assert "4242" not in response.json()["detail"]  # the path is named, never the value

    async def test_a_number_too_large_for_a_float_is_refused(
            self, client: httpx.AsyncClient, db: Database) -> None:
        event = failed_invoice_event()
        obj(event)["tax"] = 987654321
        body = se.encode(event).replace(b"987654321", b"1e400")
        before, counted = await baseline(db, "malformed")
        response = await post(client, body, se.sign(body))
        await assert_rejected(db, response, 400, "invalid_event_field", "malformed", before,
                              counted)
        assert "data.object.tax: number is not finite" in response.json()["detail"]


class TestAccepted:
    async def test_the_untouched_event_is_stored(self, client: httpx.AsyncClient, app: FastAPI,
                                                 db: Database) -> None:
        event = failed_invoice_event()
        body = se.encode(event)
        response = await post(client, body, se.sign(body))
        assert response.status_code == 200, response.text
        assert await audit_rows(db) == []  # acknowledged: stored, not yet processed
        await drain_inbox(app)
        assert [r.event_type for r in await audit_rows(db)] == ["billing.webhook.received"]

    def test_every_object_stripe_publishes_is_within_bounds(self) -> None:
        if not SHARED_STRIPE_FIXTURES.exists():
            pytest.skip("the shared copy of Stripe's fixtures is not beside this checkout")
        published = json.loads(SHARED_STRIPE_FIXTURES.read_text())["resources"]
        refused = {}
        for name, resource in published.items():
            try:
                check_bounds({"id": "evt_1", "type": f"{name}.updated", "created": 1,
                              "data": {"object": resource}})
            except OutOfBounds as error:
                refused[name] = str(error)
        assert len(published) > 100 and refused == {}

    def test_the_check_reconcile_applies_to_listed_events_refuses_them_too(self) -> None:
        event = failed_invoice_event()
        obj(event)["customer"] = "cus_\x00"
        with pytest.raises(WebhookRejected) as refused:
            checked_event(event)  # what reconcile calls on each event Stripe lists
        assert refused.value.code == "invalid_event_field"
        assert checked_event(failed_invoice_event())["type"] == "invoice.payment_failed"

