"""Verification at the door: only signed, recent, well-formed Stripe events get in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.webhooks.models import EventStatus
from billwatch.webhooks.signature import MAX_BODY_BYTES
from tests.support import TEST_WEBHOOK_SECRET, audit_rows
from tests.support import test_settings as make_settings
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Server,
    business_state,
    drain_inbox,
    metric,
    serve,
    stored_event,
)

URL = "/webhooks/stripe"
OLD_SECRET = "whsec_billwatch_previous_secret_abcdef"


def unknown_event() -> dict:
    return se.event("plan.created", se.shape("event")["data"]["object"])


async def post(client: httpx.AsyncClient, body: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return await client.post(URL, content=body, headers=headers)


async def baseline(db: Database, reason: str) -> tuple[dict[str, list[str]], float]:
    return await business_state(db), metric(db, "billing_webhooks_rejected_total", reason=reason)


async def assert_rejected(db: Database, response: httpx.Response, status: int, code: str,
                          reason: str, before: dict[str, list[str]], rejected_before: float) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert await business_state(db) == before  # nothing stored, no business change
    rows = await audit_rows(db)
    assert [(r.event_type, r.outcome) for r in rows] == [("billing.webhook.failed", Outcome.FAILURE)]
    assert rows[0].reason is not None and rows[0].reason.startswith(code)
    assert rows[0].data["stage"] == "verification" and rows[0].data["reject_reason"] == reason
    assert rows[0].client_ip in ("203.0.113.7", "127.0.0.1") and rows[0].request_id
    assert metric(db, "billing_webhooks_rejected_total", reason=reason) == rejected_before + 1


class TestAccepted:
    async def test_signed_event_of_an_unhandled_type_is_stored_ignored(
            self, client: httpx.AsyncClient, app: FastAPI, db: Database) -> None:
        event = unknown_event()
        body = se.encode(event)
        response = await post(client, body, se.sign(body))
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "event_id": event["id"], "status": "received"}
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.RECEIVED
        assert stored.attempts == 0 and await audit_rows(db) == []  # nothing ran in the request
        assert stored.payload_sha256 is not None and len(stored.payload_sha256) == 64
        again = await post(client, body, se.sign(body))
        assert again.json() == {"received": True, "event_id": event["id"], "status": "duplicate"}
        await drain_inbox(app)
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.IGNORED
        assert stored.type == "plan.created" and stored.attempts == 1
        assert stored.last_error == "event type not handled"
        assert stored.payload == event
        rows = await audit_rows(db)
        assert [r.event_type for r in rows] == ["billing.webhook.received"]
        assert rows[0].stripe_event_id == event["id"] and rows[0].actor_name == "stripe"
        assert rows[0].job_id == f"stripe-webhook:{event['id']}"

    async def test_two_v1_values_during_a_rotation_are_accepted(
            self, client: httpx.AsyncClient, db: Database) -> None:
        event = unknown_event()
        body = se.encode(event)
        header = se.sign(body, secrets=("whsec_not_ours_at_all_0000", TEST_WEBHOOK_SECRET))
        assert header.count("v1=") == 2
        response = await post(client, body, header)
        assert response.status_code == 200, response.text

    async def test_a_previous_secret_is_honoured_while_configured(
            self, db: Database, settings: Settings) -> None:
        rotated = make_settings(settings.database_url, settings.stripe_api_base or "",
                                stripe_webhook_secret="whsec_billwatch_brand_new_secret_1234",
                                stripe_webhook_secrets_previous=OLD_SECRET)
        transport = httpx.ASGITransport(app=create_app(rotated, database=db))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            old = unknown_event()
            body = se.encode(old)
            assert (await post(http, body, se.sign(body, secrets=(OLD_SECRET,)))).status_code == 200
            new = unknown_event()
            body = se.encode(new)
            both = se.sign(body, secrets=(OLD_SECRET, "whsec_billwatch_brand_new_secret_1234"))
            assert (await post(http, body, both)).status_code == 200
            stranger = se.encode(unknown_event())
            response = await post(http, stranger, se.sign(stranger, secrets=(TEST_WEBHOOK_SECRET,)))
            assert response.status_code == 400
        assert (await stored_event(db, old["id"])) is not None
        assert (await stored_event(db, new["id"])) is not None


class TestRejected:
    async def test_forged_signature(self, client: httpx.AsyncClient, db: Database) -> None:
        before, counted = await baseline(db, "signature")
        body = se.encode(unknown_event())
        forged = se.sign(body, secrets=("whsec_attacker_guess_000000",))
        response = await post(client, body, forged)
        await assert_rejected(db, response, 400, "invalid_signature", "signature", before, counted)

    async def test_body_changed_after_signing(self, client: httpx.AsyncClient, db: Database) -> None:
        before, counted = await baseline(db, "signature")
        event = unknown_event()
        header = se.sign(se.encode(event))
        event["data"]["object"]["amount"] = 1
        response = await post(client, se.encode(event), header)
        await assert_rejected(db, response, 400, "invalid_signature", "signature", before, counted)

    async def test_missing_signature(self, client: httpx.AsyncClient, db: Database) -> None:
        before, counted = await baseline(db, "missing_signature")
        response = await post(client, se.encode(unknown_event()), None)
        await assert_rejected(db, response, 400, "missing_signature", "missing_signature", before,
                              counted)

    @pytest.mark.parametrize("header", ["garbage", "t=abc,v1=00", "t=1700000000", "v1=deadbeef"])
    async def test_malformed_signature_header(self, client: httpx.AsyncClient, db: Database,
                                              header: str) -> None:
        before, counted = await baseline(db, "malformed")
        response = await post(client, se.encode(unknown_event()), header)
        await assert_rejected(db, response, 400, "malformed_signature_header", "malformed", before,
                              counted)

    async def test_stale_timestamp(self, client: httpx.AsyncClient, db: Database) -> None:
        before, counted = await baseline(db, "timestamp")
        body = se.encode(unknown_event())
        response = await post(client, body, se.sign(body, timestamp=se.now() - 301))
        await assert_rejected(db, response, 400, "timestamp_too_old", "timestamp", before, counted)

    async def test_timestamp_far_in_the_future(self, client: httpx.AsyncClient, db: Database) -> None:
        before, counted = await baseline(db, "timestamp")
        body = se.encode(unknown_event())
        response = await post(client, body, se.sign(body, timestamp=se.now() + 600))
        await assert_rejected(db, response, 400, "timestamp_in_future", "timestamp", before, counted)

    async def test_malformed_json(self, client: httpx.AsyncClient, db: Database) -> None:
        before, counted = await baseline(db, "malformed")
        body = b'{"id": "evt_1", "type": "invoice.paid", '
        response = await post(client, body, se.sign(body))
        await assert_rejected(db, response, 400, "malformed_json", "malformed", before, counted)

    @pytest.mark.parametrize("body", [b"[1, 2]", b'{"id": "evt_x", "type": "invoice.paid"}',
                                      b'{"id": "evt_x", "type": "a", "created": NaN, "data": {}}'])
    async def test_json_that_is_not_an_event(self, client: httpx.AsyncClient, db: Database,
                                             body: bytes) -> None:
        before, counted = await baseline(db, "malformed")
        response = await post(client, body, se.sign(body))
        code = "malformed_json" if b"NaN" in body else "malformed_event"
        await assert_rejected(db, response, 400, code, "malformed", before, counted)

    async def test_tolerance_of_zero_cannot_be_configured(self) -> None:
        with pytest.raises(ValidationError):
            make_settings("sqlite+aiosqlite://", "http://127.0.0.1:1", stripe_webhook_tolerance_seconds=0)


@pytest.fixture
async def live(app: FastAPI) -> AsyncIterator[Server]:
    async for running in serve(app):
        yield running


class TestOversized:
    async def test_declared_length_over_one_mebibyte_is_413(self, live: Server, db: Database) -> None:
        before, counted = await baseline(db, "too_large")
        body = b"{" + b" " * MAX_BODY_BYTES + b"}"
        response = await live.http.post(live.url, content=body,
                                        headers={"Stripe-Signature": se.sign(body)})
        await assert_rejected(db, response, 413, "payload_too_large", "too_large", before, counted)
        assert (await audit_rows(db))[0].data["content_length"] == str(len(body))

    async def test_streamed_body_over_one_mebibyte_is_413(self, live: Server, db: Database) -> None:
        before, counted = await baseline(db, "too_large")

        async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to trust
            for _ in range(20):
                yield b" " * 65536

        response = await live.http.post(live.url, content=chunks(),
                                        headers={"Stripe-Signature": "t=1,v1=00"})
        await assert_rejected(db, response, 413, "payload_too_large", "too_large", before, counted)
        assert (await audit_rows(db))[0].data["content_length"] is None

    async def test_one_mebibyte_exactly_is_read(self, live: Server, db: Database) -> None:
        event = unknown_event()
        body = se.encode(event)
        body = body + b" " * (MAX_BODY_BYTES - len(body))
        response = await live.http.post(live.url, content=body,
                                        headers={"Stripe-Signature": se.sign(body)})
        assert response.status_code == 200, response.text
