"""The Stripe-Signature header is read exactly as the SDK reads it, or refused.

The SDK verifies the HMAC with the *first* ``t=``; our future bound must look at that same
timestamp, so a header that repeats ``t`` is refused before either check runs.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest
import stripe

from billwatch.db import Database
from billwatch.webhooks.signature import RejectReason, WebhookRejected, parse_header, verify
from tests.support import TEST_WEBHOOK_SECRET
from tests.webhooks import stripe_events as se
from tests.webhooks.test_verification import assert_rejected, baseline, post, unknown_event


def v1(body: bytes, timestamp: int, secret: str = TEST_WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class TestRepeatedTimestamp:
    async def test_future_signed_then_a_current_t_is_refused(
            self, client: httpx.AsyncClient, db: Database) -> None:
        body = se.encode(unknown_event())
        future, now = se.now() + 3600, se.now()
        header = f"t={future},v1={v1(body, future)},t={now}"
        # the SDK alone accepts it: it signs with the first t and only bounds the past
        assert stripe.WebhookSignature.verify_header(body.decode(), header, TEST_WEBHOOK_SECRET, 300)
        before, counted = await baseline(db, "malformed")
        response = await post(client, body, header)
        await assert_rejected(db, response, 400, "malformed_signature_header", "malformed",
                              before, counted)
        assert "more than one t=" in response.json()["detail"]

    def test_a_repeated_t_is_refused_even_when_both_are_current(self) -> None:
        now = se.now()
        with pytest.raises(WebhookRejected) as refused:
            parse_header(f"t={now},v1={'0' * 64},t={now}")
        assert refused.value.reason is RejectReason.MALFORMED


class TestSplitLikeTheSdk:
    @pytest.mark.parametrize("header", [
        "t,v1=abc",            # t without a value: the SDK cannot read it either
        "t=12,v1",             # v1 without a value
        "t=,v1=abc",
        "t=\uff11\uff12\uff13,v1=abc",  # fullwidth digits: int() takes them, we do not
        "t=-5,v1=abc",
        "v1=abc",
        "t=123",
    ])
    def test_unreadable_headers_are_malformed(self, header: str) -> None:
        with pytest.raises(WebhookRejected) as refused:
            parse_header(header)
        assert refused.value.reason is RejectReason.MALFORMED

    def test_the_timestamp_is_the_one_the_sdk_signs_with(self) -> None:
        body = se.encode(unknown_event())
        now = se.now()
        # "t=<now>=<junk>": split("=", 2) as the SDK does keeps <now>; v0 and spaces are ignored
        header = f"t={now}=9999999999,v0=ignored, v1=nope,v1={v1(body, now)}"
        parsed = parse_header(header)
        assert parsed.timestamp == now and parsed.signatures == (v1(body, now),)
        assert verify(body, header, secrets=[TEST_WEBHOOK_SECRET], tolerance=300) == body.decode()

    def test_a_future_first_t_is_bounded(self) -> None:
        body = se.encode(unknown_event())
        future = se.now() + 600
        with pytest.raises(WebhookRejected) as refused:
            verify(body, f"t={future},v1={v1(body, future)}", secrets=[TEST_WEBHOOK_SECRET],
                   tolerance=300)
        assert refused.value.code == "timestamp_in_future"
