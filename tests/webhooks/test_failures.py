"""A handler that fails is acknowledged anyway, rolled back, retried by billwatch with backoff,
recorded attempt by attempt, and after the last attempt ``failed``, audited and replayable."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import stripe
from fastapi import FastAPI
from sqlalchemy import func, select

from billwatch.accounts.models import User
from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.billing.models import Subscription
from billwatch.config import DEFAULT_PLANS, BillingInterval, Plan, Settings
from billwatch.db import Database, utcnow
from billwatch.webhooks import service
from billwatch.webhooks.inbox import drain
from billwatch.webhooks.models import AttemptOutcome, EventStatus
from billwatch.webhooks.processing import ProcessOutcome, ProcessResult, retry_delay
from tests.support import Factory, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Server,
    attempts_of_event,
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
MAX_ATTEMPTS = 3


def with_premium(settings: Settings) -> Settings:
    return settings.model_copy(update={"plans": [*DEFAULT_PLANS, PREMIUM]})


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_max_attempts": MAX_ATTEMPTS})


async def subscriptions(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Subscription)) or 0)


async def retry_due(app: FastAPI, event_id: str) -> list[ProcessResult]:
    """Drain the inbox at the moment the event's next attempt falls due."""
    stored = await stored_event(app.state.db, event_id)
    assert stored is not None and stored.status is EventStatus.RETRYING
    assert stored.next_attempt_at is not None
    at: datetime = stored.next_attempt_at + timedelta(milliseconds=1)
    return await drain(app.state.db, app.state.gateway, app.state.settings, now=at)


async def unknown_price_event(db: Database, factory: Factory,
                              peer: stripe.StripeClient) -> tuple[User, str, dict[str, Any]]:
    """A patient, and a ``customer.subscription.created`` of theirs on a price the catalogue
    does not know yet: its handler fails until the settings gain :data:`PREMIUM`."""
    patient, customer_id = await linked_customer(db, factory, peer)
    sub_id = se.new_id("sub")
    event = se.event("customer.subscription.created", se.subscription(
        sub_id=sub_id, customer=customer_id, price=NEW_PRICE))
    return patient, sub_id, event


def failed_count(db: Database) -> float:
    return metric(db, "billing_webhooks_failed_total", event_type="customer.subscription.created")


class TestRetrySchedule:
    def test_delays_double_up_to_the_cap_and_jitter_only_shortens(self, settings: Settings) -> None:
        exact = settings.model_copy(update={"webhook_retry_jitter": 0.0,
                                            "webhook_retry_base_seconds": 10.0,
                                            "webhook_retry_max_seconds": 60.0})
        assert [retry_delay(exact, n) for n in range(1, 6)] == [10.0, 20.0, 40.0, 60.0, 60.0]
        jittered = exact.model_copy(update={"webhook_retry_jitter": 0.5})
        delays = {retry_delay(jittered, 2) for _ in range(200)}
        assert all(10.0 <= d <= 20.0 for d in delays) and len(delays) > 100


class TestHandlerFailure:
    async def test_failing_twice_then_succeeding_records_three_attempts(
            self, asgi: Server, app: FastAPI, db: Database, factory: Factory,
            peer: stripe.StripeClient, settings: Settings) -> None:
        patient, sub_id, event = await unknown_price_event(db, factory, peer)
        failed_before = failed_count(db)
        response = await asgi.deliver(event)  # Stripe is answered 200 whatever the handler does
        assert response.status_code == 200 and response.json()["status"] == "received"
        assert response.outcome == "retrying"
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.attempts == 1 and stored.processed_at is None
        assert stored.last_error is not None and NEW_PRICE in stored.last_error
        assert stored.next_attempt_at is not None and stored.next_attempt_at > utcnow()
        assert stored.claimed_by is None and stored.claimed_until is None

        # nothing is due before its time: a drain now leaves the event waiting
        assert await drain(db, app.state.gateway, settings) == []
        [second] = await retry_due(app, event["id"])
        assert second.outcome is ProcessOutcome.RETRYING and second.attempts == 2

        fixed = create_app(with_premium(settings), database=db)  # the catalogue learns the price
        [third] = await retry_due(fixed, event["id"])
        assert third.outcome is ProcessOutcome.PROCESSED and third.attempts == 3

        rows = await attempts_of_event(db, event["id"])
        assert [(a.attempt, a.outcome) for a in rows] == [
            (1, AttemptOutcome.FAILED), (2, AttemptOutcome.FAILED), (3, AttemptOutcome.PROCESSED)]
        assert all(a.error and NEW_PRICE in a.error for a in rows[:2]) and rows[2].error is None
        assert all(a.worker and a.delivery == "webhook" and a.finished_at is not None
                   and a.finished_at >= a.started_at and a.duration_ms is not None for a in rows)
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.PROCESSED
        assert stored.attempts == 3 and stored.last_error is None and stored.next_attempt_at is None
        row = await subscription_row(db, sub_id)
        assert row is not None and row.plan_code == "premium_monthly" and row.owner_id == patient.id
        assert len(await audit_rows(db, event_type="billing.subscription.created")) == 1
        [received] = await audit_rows(db, event_type="billing.webhook.received")
        assert received.data["attempt"] == 3
        # retried failures are not the alerting failure: only giving up is
        assert not await audit_rows(db, event_type="billing.webhook.failed")
        assert failed_count(db) == failed_before

    async def test_the_last_attempt_fails_the_event_audits_it_and_replay_fixes_it(
            self, asgi: Server, app: FastAPI, db: Database, factory: Factory,
            peer: stripe.StripeClient, settings: Settings) -> None:
        patient, sub_id, event = await unknown_price_event(db, factory, peer)
        failed_before = failed_count(db)
        assert (await asgi.deliver(event)).outcome == "retrying"
        await retry_due(app, event["id"])
        [last] = await retry_due(app, event["id"])
        assert last.outcome is ProcessOutcome.FAILED and last.attempts == MAX_ATTEMPTS
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.FAILED
        assert stored.next_attempt_at is None and stored.attempts == MAX_ATTEMPTS
        assert await subscriptions(db) == 0
        [failure] = await audit_rows(db, event_type="billing.webhook.failed")
        assert failure.outcome == Outcome.FAILURE and failure.data["attempts"] == MAX_ATTEMPTS
        assert failure.data["stage"] == "handler" and failure.stripe_event_id == event["id"]
        assert failure.stripe_subscription_id == sub_id and failure.owner_id == patient.id
        assert failure.reason and "UnknownPlan" in failure.reason
        assert failed_count(db) == failed_before + 1
        # a failed event is not picked up again by the processors, however late
        later = utcnow() + timedelta(days=2)
        assert await drain(db, app.state.gateway, settings, now=later) == []

        fixed = with_premium(settings)
        result = await service.replay(db, app.state.gateway, fixed, event["id"])
        assert result.outcome is ProcessOutcome.PROCESSED and result.attempts == MAX_ATTEMPTS + 1
        rows = await attempts_of_event(db, event["id"])
        assert [a.outcome for a in rows] == [AttemptOutcome.FAILED] * MAX_ATTEMPTS + [
            AttemptOutcome.PROCESSED]
        assert rows[-1].delivery == "replay"
        row = await subscription_row(db, sub_id)
        assert row is not None and row.plan_code == "premium_monthly"

    async def test_a_failure_mid_handler_leaves_no_partial_change(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        _, customer_id = await linked_customer(db, factory, peer)
        sub = await subscribe(peer, customer_id, "billwatch_basic_monthly")
        paid = (await peer_events(peer, customer_id, sub["created"]))["invoice.payment_succeeded"]
        del paid["data"]["object"]["amount_paid"]  # the handler first books the subscription, then needs this
        before = await business_state(db)
        response = await asgi.deliver(paid)
        assert response.status_code == 200 and response.outcome == "retrying"
        after = await business_state(db)
        assert after["subscriptions"] == before["subscriptions"] == []
        assert after["transactions"] == before["transactions"]
        assert await audit_rows(db) == []  # no business row, and no failure until the last attempt
        stored = await stored_event(db, paid["id"])
        assert stored is not None and stored.status is EventStatus.RETRYING
        assert stored.last_error is not None and "amount_paid" in stored.last_error
        [attempt] = await attempts_of_event(db, paid["id"])
        assert attempt.outcome is AttemptOutcome.FAILED
        assert attempt.error is not None and "amount_paid" in attempt.error
