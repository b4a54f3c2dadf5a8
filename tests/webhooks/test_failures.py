"""A handler that fails rolls everything back, answers 500, is audited, and succeeds on retry."""

from __future__ import annotations

import httpx
import pytest
import stripe
from sqlalchemy import func, select

from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.billing.models import Subscription
from billwatch.config import DEFAULT_PLANS, BillingInterval, Plan, Settings
from billwatch.db import Database
from billwatch.webhooks.models import EventStatus
from tests.support import Factory, audit_rows
from tests.support import test_settings as make_settings
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Server,
    business_state,
    linked_customer,
    metric,
    stored_event,
    subscribe,
    subscription_row,
)
from tests.webhooks.test_idempotency import peer_events

NEW_PRICE = "price_billwatch_premium_monthly"
PREMIUM = Plan(code="premium_monthly", name="Premium (monthly)", stripe_price=NEW_PRICE,
               interval=BillingInterval.MONTH, amount_cents=5000)


def with_premium(settings: Settings) -> Settings:
    return make_settings(settings.database_url, settings.stripe_api_base or "",
                         plans=[*DEFAULT_PLANS, PREMIUM])


@pytest.fixture
async def asgi(client: httpx.AsyncClient) -> Server:
    return Server("/webhooks/stripe", client)


async def subscriptions(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Subscription)) or 0)


class TestHandlerCrash:
    async def test_unknown_price_fails_then_succeeds_once_the_plan_exists(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            settings: Settings) -> None:
        patient, customer_id = await linked_customer(db, factory, peer)
        sub_id = se.new_id("sub")
        event = se.event("customer.subscription.created", se.subscription(
            sub_id=sub_id, customer=customer_id, price=NEW_PRICE))
        failed_before = metric("billing_webhooks_failed_total",
                               event_type="customer.subscription.created")
        for attempt in (1, 2):  # Stripe retries; it keeps failing until the catalogue knows the price
            response = await asgi.deliver(event)
            assert response.status_code == 500
            assert response.json()["error"] == "webhook_handler_failed"
            assert "unknown_plan" in response.json()["detail"] or "UnknownPlan" in response.json()["detail"]
            stored = await stored_event(db, event["id"])
            assert stored is not None and stored.status is EventStatus.FAILED
            assert stored.attempts == attempt and stored.processed_at is None
            assert stored.last_error is not None and NEW_PRICE in stored.last_error
        assert await subscriptions(db) == 0
        failures = await audit_rows(db, event_type="billing.webhook.failed")
        assert [(f.outcome, f.data["attempts"], f.data["stage"]) for f in failures] == [
            (Outcome.FAILURE, 1, "handler"), (Outcome.FAILURE, 2, "handler")]
        assert all(f.stripe_event_id == event["id"] and f.stripe_subscription_id == sub_id
                   and f.owner_id == patient.id and f.data["status_code"] == 500
                   and f.reason and "UnknownPlan" in f.reason for f in failures)
        assert not await audit_rows(db, event_type="billing.subscription.created")
        assert metric("billing_webhooks_failed_total",
                      event_type="customer.subscription.created") == failed_before + 2

        fixed = create_app(with_premium(settings), database=db)
        transport = httpx.ASGITransport(app=fixed)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            retried = await Server("/webhooks/stripe", http).deliver(event)
        assert retried.status_code == 200 and retried.json()["status"] == "processed"
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.PROCESSED
        assert stored.attempts == 3 and stored.last_error is None
        row = await subscription_row(db, sub_id)
        assert row is not None and row.plan_code == "premium_monthly"
        assert len(await audit_rows(db, event_type="billing.subscription.created")) == 1
        assert len(await audit_rows(db, event_type="billing.webhook.failed")) == 2

    async def test_a_failure_mid_handler_leaves_no_partial_change(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        _, customer_id = await linked_customer(db, factory, peer)
        sub = await subscribe(peer, customer_id, "billwatch_basic_monthly")
        paid = (await peer_events(peer, customer_id, sub["created"]))["invoice.payment_succeeded"]
        del paid["data"]["object"]["amount_paid"]  # the handler first books the subscription, then needs this
        before = await business_state(db)
        response = await asgi.deliver(paid)
        assert response.status_code == 500
        after = await business_state(db)
        assert after["subscriptions"] == before["subscriptions"] == []
        assert after["transactions"] == before["transactions"]
        assert [r.event_type for r in await audit_rows(db)] == ["billing.webhook.failed"]
        stored = await stored_event(db, paid["id"])
        assert stored is not None and stored.status is EventStatus.FAILED
        assert stored.last_error is not None and "amount_paid" in stored.last_error

