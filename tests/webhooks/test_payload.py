"""Stored payloads are redacted; the fast path stores exactly what the full redactor would."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from billwatch.db import Database
from billwatch.redaction import redact
from billwatch.webhooks import shapes
from billwatch.webhooks.payload import may_need_redaction, redacted_payload
from tests.support import SHARED_STRIPE_FIXTURES
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, stored_event

KEYS = st.sampled_from(["id", "amount", "number", "cvc", "card_number", "description", "secret",
                        "Authorization", "pan", "metadata", "last4", "name", "CVV", "token_secret",
                        "card", "exp_month", "CardNumber", "x-api-key", "client_secret", "token",
                        "cookie", "payment_method", "security_code", "Card-Verification-Code"])
TEXT = st.text(alphabet=st.sampled_from(list("0123456789 -_abcksrtlivewhbBearsic\\\n\x7f\u2028é")),
               max_size=30)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
                    TEXT, st.sampled_from([
                        "4242 4242 4242 4242", "sk_test_abc123", "tok_visa", "whsec_x1",
                        "Bearer abc.def", "Basic (monthly)", "", "pm_1Abc", "cvc: 123",
                        "Authorization: Bearer abcdef123456789", "eyJhbGciOi.eyJzdWIiOi.sig",
                        "pi_123_secret_456", "order 12 4111 1111 1111 1111", "123456789012",
                        "sk_live_0123456789", "4000-0566-5566-5556", "network_status", "risk_level",
                        "billwatch_basic_monthly", "ch_3Mabc1234567890123456",
                        "4242.4242.4242.4242", "6011/1111/1111/1117", "4242_4242_4242_4242",
                        "4242%204242%204242%204242", "cvv is 123", "CVC code: 123",
                        '{"cvc": "987"}', "apikey_sk_live_abc123", "xwhsec_abc", "risk_level",
                        "\uff14\uff12\uff14\uff12" * 4, "4242\u200b4242\u200b4242\u200b4242",
                        "2026-12-01T10:20:58.123456+00:00", "1,234,567.89", "50% off"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)), max_leaves=25)


class TestFastPathEqualsRedactor:
    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(KEYS, JSON, max_size=6), st.booleans(), st.booleans())
    def test_same_result_for_any_body(self, event: dict[str, Any], indent: bool, ascii_only: bool) -> None:
        body = json.dumps(event, indent=2 if indent else None, ensure_ascii=ascii_only).encode()
        assert redacted_payload(body, json.loads(body)) == redact(json.loads(body))

    def test_stripe_objects_take_the_fast_path_unchanged(self) -> None:
        for name in ("invoice", "subscription", "refund", "checkout.session"):
            event = se.event(f"{name}.x", se.shape(name))
            body = se.encode(event)
            assert not may_need_redaction(body), name
            assert redacted_payload(body, event) is event
        charge = se.event("charge.x", se.shape("charge"))  # its source carries a client secret
        body = se.encode(charge)
        assert may_need_redaction(body) and redacted_payload(body, charge) == redact(charge) != charge

    def test_invoice_numbers_and_plan_names_take_the_fast_path(self) -> None:
        invoice = {**se.shape("invoice"), "number": "BW-0042", "description": "1 x Basic (monthly)"}
        body = se.encode(se.event("invoice.x", invoice))
        assert not may_need_redaction(body)

    def test_anything_card_like_takes_the_full_redactor(self) -> None:
        for fragment in ('"4242424242424242"', '"4242-4242-4242-4242"', '"cvc": null',
                         '"number": "424242424242"', '"x": "sk_live_abc"', '"x": "a\\nb"'):
            assert may_need_redaction(('{"a": ' + fragment.split(": ", 1)[-1] + ', ' + fragment + "}")
                                      .encode()), fragment


class TestStoredPayload:
    async def test_card_data_never_reaches_the_event_store(self, client: httpx.AsyncClient,
                                                          app: FastAPI, db: Database) -> None:
        charge = se.charge(charge_id=se.new_id("ch"), customer=se.new_id("cus"), payment_intent=None,
                           amount=100, amount_refunded=0)
        charge["payment_method_details"] = {"type": "card", "card": {
            "number": "4242 4242 4242 4242", "cvc": "123", "last4": "4242"}}
        charge["description"] = "paid with 4000-0566-5566-5556 (sk_test_leaked0001)"
        event = se.event("charge.succeeded", charge)
        response = await Server("/webhooks/stripe", client, app).deliver(event)
        assert response.status_code == 200
        stored = await stored_event(db, event["id"])
        assert stored is not None
        text = json.dumps(stored.payload)
        for secret in ("4242 4242 4242 4242", "4000-0566-5566-5556", "sk_test_leaked0001", '"cvc"'):
            assert secret not in text
        card = stored.payload["data"]["object"]["payment_method_details"]["card"]
        assert card["number"] == "****4242" and card["last4"] == "4242" and "cvc" not in card


class TestBothShapes:
    def test_the_test_data_is_stripes_published_objects_unchanged(self) -> None:
        if not SHARED_STRIPE_FIXTURES.exists():
            pytest.skip("the shared copy of Stripe's fixtures is not beside this checkout")
        published = json.loads(SHARED_STRIPE_FIXTURES.read_text())["resources"]
        ours = json.loads(se.DATA.read_text())
        assert {name: published[name] for name in ours if name != "_source"} == {
            name: value for name, value in ours.items() if name != "_source"}

    def test_invoice_links_in_either_shape(self) -> None:
        current = se.invoice(invoice_id="in_1", customer="cus_1", subscription_id="sub_1",
                             price="price_1", amount=100, paid=True, payment_intent="pi_1")
        assert shapes.invoice_subscription_id(current) == "sub_1"
        assert shapes.invoice_payment_intent_id(current) == "pi_1"
        assert shapes.invoice_charge_id(current) is None
        assert shapes.invoice_price_id(current) == "price_1"
        older = {"id": "in_2", "subscription": "sub_2", "charge": {"id": "ch_2", "payment_intent": "pi_2",
                                                                   "failure_code": "card_declined"},
                 "lines": {"data": [{"plan": {"id": "plan_2"}}]}}
        assert shapes.invoice_subscription_id(older) == "sub_2"
        assert (shapes.invoice_charge_id(older), shapes.invoice_payment_intent_id(older)) == ("ch_2", "pi_2")
        assert shapes.invoice_price_id(older) == "plan_2"
        assert shapes.invoice_failure(older).code == "card_declined"
        details = {"subscription_item_details": {"subscription": "sub_3"}}
        only_lines = {"lines": {"data": [{"parent": details}]}}
        assert shapes.invoice_subscription_id(only_lines) == "sub_3"

    def test_subscription_period_and_price_in_either_shape(self) -> None:
        current = se.subscription(sub_id="sub_1", customer="cus_1", price="price_1", period=(100, 200))
        assert "current_period_end" not in current
        assert shapes.subscription_price_id(current) == "price_1"
        assert [p.timestamp() for p in shapes.subscription_period(current) if p] == [100, 200]
        older = {"current_period_start": 300, "current_period_end": 400,
                 "items": {"data": [{"plan": {"id": "plan_9"}}]}}
        assert shapes.subscription_price_id(older) == "plan_9"
        assert [p.timestamp() for p in shapes.subscription_period(older) if p] == [300, 400]
