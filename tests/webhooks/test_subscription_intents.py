"""Webhooks and our intents: adopting a pending checkout or cancel, flagging a second subscription."""

from __future__ import annotations

import uuid

import httpx
import pytest
import stripe
from sqlalchemy import select

from billwatch.accounts.models import OwnerType, Role
from billwatch.alerts.models import Alert
from billwatch.audit.events import Outcome
from billwatch.billing.models import (
    CancelMode,
    CheckoutSession,
    CheckoutStatus,
    IntentStatus,
    Subscription,
    SubscriptionCancellation,
)
from billwatch.db import Database
from tests.support import Factory, audit_rows, reload
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, checkout_customer, subscribe, subscription_row


@pytest.fixture
async def asgi(client: httpx.AsyncClient) -> Server:
    return Server("/webhooks/stripe", client)


class TestSecondLiveSubscription:
    async def test_is_recorded_flagged_and_alerted(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        customer = await checkout_customer(client, db, factory)
        first = await subscribe(peer, customer.stripe_id, "billwatch_basic_monthly",
                                customer.metadata())
        created = se.event("customer.subscription.created", se.subscription(
            sub_id=first["id"], customer=customer.stripe_id, price="billwatch_basic_monthly"))
        assert (await asgi.deliver(created)).json()["status"] == "processed"
        # a second subscription made on Stripe's side (a second checkout tab, the Dashboard)
        second_id = se.new_id("sub")
        second = se.event("customer.subscription.created", se.subscription(
            sub_id=second_id, customer=customer.stripe_id, price="billwatch_plus_monthly"))
        response = await asgi.deliver(second)
        assert response.json()["status"] == "processed", response.text

        live = await subscription_row(db, first["id"])
        dup = await subscription_row(db, second_id)
        assert live is not None and live.duplicate_of_id is None
        assert dup is not None and dup.duplicate_of_id == live.id
        assert dup.owner_id == customer.patient.id and dup.plan_code == "plus_monthly"
        [flag] = await audit_rows(db, event_type="billing.subscription.duplicate_flagged")
        assert flag.stripe_subscription_id == second_id
        assert flag.data["duplicate_of_id"] == str(live.id)
        async with db.sessionmaker() as session:
            alerts = (await session.scalars(select(Alert).where(
                Alert.kind == "duplicate_subscription"))).all()
        assert len(alerts) == 1 and second_id in alerts[0].dedup_key
        assert alerts[0].payload["duplicate_of_id"] == str(live.id)

        replay = await asgi.deliver(second)  # the same event again changes nothing
        assert replay.json()["status"] in ("duplicate", "processed")
        assert len(await audit_rows(db, event_type="billing.subscription.duplicate_flagged")) == 1


class TestAdoption:
    async def test_checkout_completed_settles_a_pending_checkout_as_its_actor(
            self, asgi: Server, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        patient = await factory.user(Role.PATIENT)
        # phase 1 only, as if the process died right after the intent committed
        async with db.unit_of_work() as session:
            checkout = CheckoutSession(
                id=uuid.uuid4(), owner_type=OwnerType.PATIENT, owner_id=patient.id,
                plan_code="basic_monthly", status=CheckoutStatus.PENDING,
                created_by_user_id=patient.id, idempotency_key=f"checkout:{uuid.uuid4()}")
            session.add(checkout)
        customer = await peer.v1.customers.create_async(params={"name": patient.name})
        meta = {"billwatch_checkout_id": str(checkout.id), "billwatch_owner_type": "patient",
                "billwatch_owner_id": str(patient.id), "billwatch_plan": "basic_monthly"}
        sub = await subscribe(peer, customer.id, "billwatch_basic_monthly", meta)
        completed = se.event("checkout.session.completed", se.checkout_session(
            session_id=se.new_id("cs"), customer=customer.id, subscription_id=sub["id"],
            metadata=meta, amount=1500))
        assert (await asgi.deliver(completed)).json()["status"] == "processed"

        settled = await reload(db, CheckoutSession, checkout.id)
        assert settled.status is CheckoutStatus.COMPLETE
        assert settled.stripe_customer_id == customer.id
        [created] = await audit_rows(db, event_type="billing.checkout.created")
        assert created.actor_user_id == patient.id and created.outcome is Outcome.SUCCESS
        assert created.data["adopted_from"] == "checkout.session.completed"
        row = await subscription_row(db, sub["id"])
        assert row is not None and row.owner_id == patient.id

    async def test_a_subscription_update_settles_a_pending_cancel_as_its_actor(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        customer = await checkout_customer(client, db, factory)
        sub = await subscribe(peer, customer.stripe_id, "billwatch_basic_monthly",
                              customer.metadata())
        created = se.event("customer.subscription.created", se.subscription(
            sub_id=sub["id"], customer=customer.stripe_id, price="billwatch_basic_monthly"),
            created=se.now() - 10)
        assert (await asgi.deliver(created)).json()["status"] == "processed"
        row = await subscription_row(db, sub["id"])
        assert row is not None
        async with db.unit_of_work() as session:  # phase 1 only: the cancel intent
            intent = SubscriptionCancellation(
                id=uuid.uuid4(), subscription_id=row.id, mode=CancelMode.PERIOD_END,
                status=IntentStatus.PENDING, idempotency_key=f"cancel:{row.id}:x",
                actor_user_id=customer.patient.id, actor_role=Role.PATIENT, reason="moving")
            session.add(intent)
        updated = se.event("customer.subscription.updated", se.subscription(
            sub_id=sub["id"], customer=customer.stripe_id, price="billwatch_basic_monthly",
            cancel_at_period_end=True))
        assert (await asgi.deliver(updated)).json()["status"] == "processed"

        assert (await reload(db, SubscriptionCancellation, intent.id)).status is IntentStatus.SUCCEEDED
        assert (await reload(db, Subscription, row.id)).cancel_at_period_end is True
        [cancelled] = await audit_rows(db, event_type="billing.subscription.cancelled")
        assert cancelled.actor_user_id == customer.patient.id
        assert cancelled.data["adopted_from"] == "customer.subscription.updated"
        assert cancelled.data["reason"] == "moving"
