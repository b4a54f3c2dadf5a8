"""The same event, twice or at once: state changes once, audit rows are written once, all get 200."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import stripe
from sqlalchemy import func, select

from billwatch.billing.models import Subscription, Transaction
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks.inbox import accept, drain
from billwatch.webhooks.models import EventStatus, StripeEvent
from billwatch.webhooks.processing import ProcessOutcome
from tests.support import Factory, audit_rows
from tests.webhooks.conftest import (
    Server,
    linked_customer,
    metric,
    stored_event,
    subscribe,
    transactions_of,
)

PRICE = "billwatch_plus_monthly"


async def peer_events(peer: stripe.StripeClient, customer_id: str, since: int) -> dict[str, dict[str, Any]]:
    """The events the Stripe peer recorded for one customer, by type (its Events API)."""
    found: dict[str, dict[str, Any]] = {}
    page = await peer.v1.events.list_async(params={"created": {"gte": since - 1}, "limit": 100})
    while True:
        for event in page.data:
            data = event.to_dict()
            if data["data"]["object"].get("customer") == customer_id:
                found.setdefault(data["type"], data)
        if not page.has_more:
            return found
        page = await peer.v1.events.list_async(params={
            "created": {"gte": since - 1}, "limit": 100, "starting_after": page.data[-1].id})


async def count(db: Database, model: Any, *conditions: Any) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


async def new_subscription_events(db: Database, factory: Factory, peer: stripe.StripeClient,
                                  ) -> tuple[str, dict[str, dict[str, Any]]]:
    """A real subscription at the peer whose events no webhook delivered (yet)."""
    patient, customer_id = await linked_customer(db, factory, peer)
    sub = await subscribe(peer, customer_id, PRICE)
    return str(patient.id), await peer_events(peer, customer_id, sub["created"])


class TestSequentialDuplicates:
    async def test_second_delivery_answers_200_and_changes_nothing(
            self, db: Database, factory: Factory, peer: stripe.StripeClient, server: Server,
            localstripe_silent: None) -> None:
        _, events = await new_subscription_events(db, factory, peer)
        paid = events["invoice.payment_succeeded"]
        succeeded = ("billing_payments_succeeded_total", {"owner_type": "patient", "plan": "plus_monthly"})
        before = metric(db, succeeded[0], **succeeded[1])
        first = await server.deliver(paid)
        assert first.status_code == 200 and first.outcome == "processed", first.text
        state = await self.state(db)
        stored = await stored_event(db, paid["id"])
        assert stored is not None
        for _ in range(2):
            again = await server.deliver(paid)
            assert again.status_code == 200
            assert again.json() == {"received": True, "event_id": paid["id"], "status": "duplicate"}
        assert await self.state(db) == state
        again_stored = await stored_event(db, paid["id"])
        assert again_stored is not None and again_stored.processed_at == stored.processed_at
        assert again_stored.attempts == 1 and again_stored.status is EventStatus.PROCESSED
        assert metric(db, succeeded[0], **succeeded[1]) == before + 1

    @staticmethod
    async def state(db: Database) -> tuple[list[Any], int, int]:
        return ([r.id for r in await audit_rows(db)], await count(db, Transaction),
                await count(db, Subscription))

    async def test_invoice_paid_and_payment_succeeded_book_one_payment(
            self, db: Database, factory: Factory, peer: stripe.StripeClient, server: Server,
            localstripe_silent: None) -> None:
        patient_id, events = await new_subscription_events(db, factory, peer)
        paid = events["invoice.payment_succeeded"]
        twin = {**paid, "id": paid["id"] + "twin", "type": "invoice.paid"}
        for event in (paid, twin):
            response = await server.deliver(event)
            assert response.outcome == "processed", response.text
        txs = await transactions_of(db, uuid.UUID(patient_id))
        assert len(txs) == 1
        assert len(await audit_rows(db, event_type="billing.payment.succeeded")) == 1
        received = await audit_rows(db, event_type="billing.webhook.received")
        assert [r.data.get("note") for r in received if r.stripe_event_id == twin["id"]] == [
            "payment already recorded"]


class TestConcurrentDuplicates:
    async def test_simultaneous_http_deliveries_change_state_once(
            self, db: Database, factory: Factory, peer: stripe.StripeClient, server: Server,
            localstripe_silent: None) -> None:
        _, events = await new_subscription_events(db, factory, peer)
        created, paid = events["customer.subscription.created"], events["invoice.payment_succeeded"]
        # Six workers get the same two events at once: the subscription's and its invoice's.
        responses = await asyncio.gather(*[server.deliver(e) for e in (created, paid) * 3])
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        for event in (created, paid):
            statuses = sorted(r.outcome for r in responses if r.json()["event_id"] == event["id"])
            assert statuses == ["duplicate", "duplicate", "processed"]
        assert await count(db, Subscription) == 1 and await count(db, Transaction) == 1
        for event_type in ("billing.subscription.created", "billing.payment.succeeded"):
            assert len(await audit_rows(db, event_type=event_type)) == 1
        received = await audit_rows(db, event_type="billing.webhook.received")
        assert sorted(r.stripe_event_id for r in received) == sorted([created["id"], paid["id"]])
        assert not await audit_rows(db, event_type="billing.webhook.failed")

    async def test_twenty_deliveries_at_once_store_one_row_and_apply_once(
            self, db: Database, factory: Factory, peer: stripe.StripeClient, server: Server,
            localstripe_silent: None) -> None:
        _, events = await new_subscription_events(db, factory, peer)
        paid = events["invoice.payment_succeeded"]
        responses = await asyncio.gather(*[server.deliver(paid) for _ in range(20)])
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        answers = sorted(r.json()["status"] for r in responses)
        assert answers == ["duplicate"] * 19 + ["received"]
        assert sorted(str(r.outcome) for r in responses) == ["duplicate"] * 19 + ["processed"]
        assert await count(db, StripeEvent, StripeEvent.stripe_event_id == paid["id"]) == 1
        assert await count(db, Transaction) == 1
        assert len(await audit_rows(db, event_type="billing.payment.succeeded")) == 1
        assert len(await audit_rows(db, event_type="billing.webhook.received")) == 1
        stored = await stored_event(db, paid["id"])
        assert stored is not None and stored.attempts == 1

    async def test_processors_draining_at_once_apply_each_event_once(
            self, db: Database, factory: Factory, peer: stripe.StripeClient, settings: Settings,
            localstripe_silent: None) -> None:
        _, events = await new_subscription_events(db, factory, peer)
        created, paid = events["customer.subscription.created"], events["invoice.payment_succeeded"]
        for event in (created, paid):
            assert (await accept(db, event)).stored
        assert not (await accept(db, paid)).stored  # a second store of the id adds nothing
        gateway = PaymentsGateway(settings)
        drains = await asyncio.gather(*[drain(db, gateway, settings) for _ in range(4)])
        results = [r for batch in drains for r in batch]
        processed = sorted(r.event_id for r in results if r.outcome is ProcessOutcome.PROCESSED)
        assert processed == sorted([created["id"], paid["id"]])
        assert all(r.outcome is not ProcessOutcome.FAILED for r in results)
        assert await count(db, Transaction) == 1 and await count(db, Subscription) == 1
        assert len(await audit_rows(db, event_type="billing.payment.succeeded")) == 1
        stored = await stored_event(db, paid["id"])
        assert stored is not None and stored.attempts == 1
