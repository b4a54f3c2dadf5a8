"""`billwatch webhooks list | replay | reconcile` against the test database and the Stripe peer."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe
from sqlalchemy import func, select, update
from typer.testing import CliRunner, Result

from billwatch.cli import app as cli
from billwatch.config import Settings, get_settings
from billwatch.db import Database
from billwatch.webhooks.inbox import accept
from billwatch.webhooks.models import EventSource, EventStatus, StripeEvent
from tests.support import TEST_TOKEN_SECRET, TEST_WEBHOOK_SECRET, Factory, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Server,
    linked_customer,
    stored_event,
    subscribe,
    subscription_row,
    transactions_of,
)
from tests.webhooks.test_failures import PREMIUM, unknown_price_event


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One attempt per event: a failing handler leaves its event ``failed`` at once."""
    return settings.model_copy(update={"webhook_max_attempts": 1})


async def billwatch(settings: Settings, *args: str, premium: bool = False) -> Result:
    """Run the console command in-process (its own event loop, in a thread) with our settings."""
    env = {"BILLWATCH_ENV": "development", "BILLWATCH_DATABASE_URL": settings.database_url,
           "BILLWATCH_STRIPE_API_BASE": settings.stripe_api_base or "",
           "BILLWATCH_STRIPE_API_KEY": "sk_test_billwatch_tests",
           "BILLWATCH_STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
           "BILLWATCH_TOKEN_SECRET": TEST_TOKEN_SECRET, "BILLWATCH_LOG_LEVEL": "WARNING",
           "COLUMNS": "250"}
    if premium:
        env["BILLWATCH_PLANS"] = json.dumps(
            [p.model_dump(mode="json") for p in [*settings.plans, PREMIUM]])
    get_settings.cache_clear()
    try:
        return await asyncio.to_thread(CliRunner().invoke, cli, ["webhooks", *args], env=env)
    finally:
        get_settings.cache_clear()


async def failing_subscription(asgi: Server, db: Database, factory: Factory,
                               peer: stripe.StripeClient) -> dict[str, Any]:
    """A subscription event that fails: its price is not in the catalogue (yet)."""
    _, _, event = await unknown_price_event(db, factory, peer)
    assert (await asgi.deliver(event)).outcome == "failed"
    return event


class TestList:
    async def test_lists_failed_events(self, asgi: Server, db: Database, factory: Factory,
                                       peer: stripe.StripeClient, settings: Settings) -> None:
        failing = await failing_subscription(asgi, db, factory, peer)
        fine = se.event("product.created", {"id": "prod_x", "object": "product"})
        assert (await asgi.deliver(fine)).status_code == 200
        result = await billwatch(settings, "list", "--status", "failed")
        assert result.exit_code == 0, result.output
        assert failing["id"] in result.output and "UnknownPlan" in result.output
        assert fine["id"] not in result.output and "\n1 event(s)" in result.output
        everything = await billwatch(settings, "list")
        assert fine["id"] in everything.output and "\n2 event(s)" in everything.output


class TestReplay:
    async def test_replay_one_event_after_the_fix(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            settings: Settings) -> None:
        failing = await failing_subscription(asgi, db, factory, peer)
        still = await billwatch(settings, "replay", failing["id"])
        assert still.exit_code == 1 and "failed" in still.output
        fixed = await billwatch(settings, "replay", failing["id"], premium=True)
        assert fixed.exit_code == 0, fixed.output
        assert "processed" in fixed.output and failing["id"] in fixed.output
        stored = await stored_event(db, failing["id"])
        assert stored is not None and stored.status is EventStatus.PROCESSED and stored.attempts == 3
        assert await subscription_row(db, failing["data"]["object"]["id"]) is not None
        received = await audit_rows(db, event_type="billing.webhook.received")
        assert [(r.data["delivery"], r.job_id) for r in received] == [
            ("replay", f"stripe-replay:{failing['id']}")]
        assert [f.data["delivery"] for f in await audit_rows(db, event_type="billing.webhook.failed")
                ] == ["webhook", "replay"]
        again = await billwatch(settings, "replay", failing["id"], premium=True)
        assert again.exit_code == 0 and "duplicate" in again.output

    async def test_replay_every_failed_event(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            settings: Settings) -> None:
        failing = [await failing_subscription(asgi, db, factory, peer) for _ in range(2)]
        result = await billwatch(settings, "replay", "--failed", premium=True)
        assert result.exit_code == 0, result.output
        assert "\n2 event(s) replayed" in result.output
        for event in failing:
            stored = await stored_event(db, event["id"])
            assert stored is not None and stored.status is EventStatus.PROCESSED
        assert (await billwatch(settings, "replay", "--failed")).output.startswith("0 event(s) replayed")

    async def test_unknown_event_and_bad_arguments(self, db: Database, settings: Settings) -> None:
        missing = await billwatch(settings, "replay", "evt_nothing_here")
        assert missing.exit_code == 1 and "no stored Stripe event" in missing.output
        assert (await billwatch(settings, "replay")).exit_code != 0
        assert (await billwatch(settings, "replay", "evt_x", "--failed")).exit_code != 0


class TestReconcile:
    async def test_events_no_webhook_delivered_are_processed_once(
            self, db: Database, factory: Factory, peer: stripe.StripeClient, settings: Settings,
            localstripe_silent: None) -> None:
        since = datetime.now(UTC).replace(microsecond=0)
        patient, customer_id = await linked_customer(db, factory, peer)
        sub = await subscribe(peer, customer_id, "billwatch_clinic_monthly")  # nobody is told

        result = await billwatch(settings, "reconcile", "--since", since.isoformat())
        assert result.exit_code == 0, result.output
        assert ", 0 failed." in result.output
        assert sub["id"] in result.output or "customer.subscription.created" in result.output
        row = await subscription_row(db, sub["id"])
        assert row is not None and row.owner_id == patient.id and row.plan_code == "clinic_monthly"
        assert [t.stripe_invoice_id for t in await transactions_of(db, patient.id)] == [
            sub["latest_invoice"]]
        received = [r for r in await audit_rows(db, event_type="billing.webhook.received")
                    if r.owner_id == patient.id]
        assert {r.data["type"] for r in received} >= {"customer.subscription.created",
                                                      "invoice.payment_succeeded"}
        assert all(r.data["delivery"] == "reconcile" and r.data["missed_delivery"] for r in received)
        assert all(r.job_id and r.job_id.startswith("stripe-reconcile:") for r in received)
        stored = await stored_event(db, received[0].stripe_event_id or "")
        assert stored is not None and stored.source is EventSource.RECONCILE
        async with db.sessionmaker() as session:  # Stripe may list other tests' events too
            reconciled = await session.scalar(select(func.count()).select_from(StripeEvent).where(
                StripeEvent.source == EventSource.RECONCILE))
        assert reconciled and f"{reconciled} had not been delivered" in result.output
        assert len(await audit_rows(db, event_type="billing.payment.succeeded")) == 1

        again = await billwatch(settings, "reconcile", "--since", since.isoformat())
        assert again.exit_code == 0 and "; 0 had not been delivered" in again.output
        assert len(await audit_rows(db, event_type="billing.payment.succeeded")) == 1

    async def test_a_bad_date_is_refused(self, db: Database, settings: Settings) -> None:
        result = await billwatch(settings, "reconcile", "--since", "last tuesday")
        assert result.exit_code != 0 and "not an ISO date" in result.output


class TestProcessAndPrune:
    async def test_process_drains_the_inbox_and_prune_drops_only_old_payloads(
            self, db: Database, settings: Settings) -> None:
        old, recent = (se.event("plan.created", se.shape("event")["data"]["object"])
                       for _ in range(2))
        for event in (old, recent):
            assert (await accept(db, event)).stored
        processed = await billwatch(settings, "process")
        assert processed.exit_code == 0, processed.output
        assert "2 event(s) processed" in processed.output
        assert old["id"] in processed.output and "ignored" in processed.output
        long_ago = datetime.now(UTC) - timedelta(days=settings.webhook_payload_retention_days + 1)
        async with db.unit_of_work() as session:
            await session.execute(update(StripeEvent).where(
                StripeEvent.stripe_event_id == old["id"]).values(received_at=long_ago))
        pruned = await billwatch(settings, "prune")
        assert pruned.exit_code == 0 and "1 payload(s) pruned" in pruned.output, pruned.output
        gone, kept = await stored_event(db, old["id"]), await stored_event(db, recent["id"])
        assert gone is not None and gone.payload is None and gone.payload_sha256
        assert kept is not None and kept.payload == recent
