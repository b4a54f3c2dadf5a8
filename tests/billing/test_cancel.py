"""Cancelling: at period end or now, at Stripe and here, attributed to whoever did it."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from billwatch.accounts.models import Role
from billwatch.audit.events import Outcome
from billwatch.billing.models import (
    CancelMode,
    IntentStatus,
    Subscription,
    SubscriptionCancellation,
    SubscriptionStatus,
)
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from tests.support import Factory, People, audit_rows, paid_subscription, reload, snapshot


async def intents(db: Database) -> list[SubscriptionCancellation]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(select(SubscriptionCancellation)
                                           .order_by(SubscriptionCancellation.created_at))).all())


class TestCancel:
    async def test_at_period_end_keeps_it_active_and_tells_stripe(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        response = await client.post(f"/billing/subscriptions/{subscription.id}/cancel",
                                     headers=factory.headers(people.patient),
                                     json={"at_period_end": True, "reason": "moving abroad"})
        assert response.status_code == 200, response.text
        stored = await reload(db, Subscription, subscription.id)
        assert stored.status is SubscriptionStatus.ACTIVE and stored.cancel_at_period_end
        assert subscription.stripe_subscription_id is not None
        at_stripe = await PaymentsGateway(settings).client.v1.subscriptions.retrieve_async(
            subscription.stripe_subscription_id)
        assert at_stripe.cancel_at_period_end is True
        requested, row = await audit_rows(db)
        assert requested.event_type == "billing.subscription.cancel_requested"
        assert row.event_type == "billing.subscription.cancelled" and row.outcome is Outcome.SUCCESS
        assert row.data["mode"] == "period_end" and row.data["reason"] == "moving abroad"
        [intent] = await intents(db)
        assert intent.status is IntentStatus.SUCCEEDED and intent.mode is CancelMode.PERIOD_END
        assert row.idempotency_key == intent.idempotency_key == requested.idempotency_key
        assert intent.idempotency_key.startswith(f"cancel:{subscription.id}:period_end:")
        assert row.stripe_subscription_id == subscription.stripe_subscription_id

    async def test_immediately_ends_it_here_and_at_stripe(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        response = await client.post(f"/billing/subscriptions/{subscription.id}/cancel",
                                     headers=factory.headers(people.admin),
                                     json={"at_period_end": False})
        assert response.status_code == 200
        stored = await reload(db, Subscription, subscription.id)
        assert stored.status is SubscriptionStatus.CANCELED and stored.ended_at is not None
        assert subscription.stripe_subscription_id is not None
        at_stripe = await PaymentsGateway(settings).client.v1.subscriptions.retrieve_async(
            subscription.stripe_subscription_id)
        assert at_stripe.status == "canceled"
        [row] = await audit_rows(db, event_type="billing.subscription.cancelled")
        assert row.actor_role is Role.ADMIN and row.data["mode"] == "immediately"

    async def test_a_proxy_cancel_names_the_assignment(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        assigned = await client.post(f"/patients/{people.patient.id}/billing-managers",
                                     headers=factory.headers(people.patient),
                                     json={"proxy_id": str(people.proxy.id)})
        assert assigned.status_code == 201
        subscription, _ = await paid_subscription(db, settings, people.owner)
        response = await client.post(f"/billing/subscriptions/{subscription.id}/cancel",
                                     headers=factory.headers(people.proxy), json={})
        assert response.status_code == 200, response.text
        [row] = await audit_rows(db, event_type="billing.proxy.subscription.cancelled")
        assert row.actor_user_id == people.proxy.id
        assert str(row.manager_assignment_id) == assigned.json()["id"]

    async def test_twice_is_409_and_changes_nothing(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        url = f"/billing/subscriptions/{subscription.id}/cancel"
        headers = factory.headers(people.patient)
        assert (await client.post(url, headers=headers, json={"at_period_end": False})).status_code == 200
        before = await snapshot(db)
        again = await client.post(url, headers=headers, json={"at_period_end": False})
        assert again.status_code == 409 and again.json()["error"] == "already_cancelled"
        assert await snapshot(db) == before

    async def test_unknown_subscription_is_404(self, client: httpx.AsyncClient, db: Database,
                                               factory: Factory, people: People) -> None:
        response = await client.post(f"/billing/subscriptions/{uuid.uuid4()}/cancel",
                                     headers=factory.headers(people.admin), json={})
        assert response.status_code == 404
        [row] = await audit_rows(db)
        assert row.outcome is Outcome.FAILURE and row.resource_type == "subscription"

    async def test_stripe_refusing_leaves_the_subscription_as_it_was(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        async with db.unit_of_work() as session:
            stored = await session.get(Subscription, subscription.id)
            assert stored is not None
            stored.stripe_subscription_id = "sub_doesnotexistatstripe"
        before = await snapshot(db)
        response = await client.post(f"/billing/subscriptions/{subscription.id}/cancel",
                                     headers=factory.headers(people.patient),
                                     json={"at_period_end": False})
        assert response.status_code == 502
        after = await snapshot(db)
        assert after["subscriptions"] == before["subscriptions"]
        [intent] = await intents(db)
        assert intent.status is IntentStatus.FAILED and intent.error
        requested, row = await audit_rows(db)
        assert requested.event_type == "billing.subscription.cancel_requested"
        assert row.outcome is Outcome.FAILURE and "subscription cancellation failed" in (row.reason or "")
        assert row.actor_user_id == people.patient.id
