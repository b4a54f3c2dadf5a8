"""Checkout and cancel in phases: what a hanging or failing Stripe leaves, races, SQLite locking."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from billwatch.accounts.actor import Actor
from billwatch.accounts.models import Role
from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.billing import checkout as checkout_service
from billwatch.billing.intent_sweeper import sweep_subscription_intents
from billwatch.billing.models import (
    CheckoutSession,
    CheckoutStatus,
    IntentStatus,
    StripeCustomer,
    Subscription,
    SubscriptionCancellation,
    SubscriptionStatus,
)
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.payments.gateway import PaymentsGateway
from tests.support import (
    Factory,
    HangingStripe,
    People,
    audit_rows,
    free_port,
    paid_subscription,
    reload,
)


def later(settings: Settings) -> object:
    """A sweep time past the intents' grace period."""
    return utcnow() + timedelta(seconds=settings.subscription_intent_grace_seconds + 1)


async def checkouts(db: Database) -> list[CheckoutSession]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(select(CheckoutSession)
                                           .order_by(CheckoutSession.created_at))).all())


class TestStripeHangingOrFailingAfterTheIntent:
    async def test_a_hang_leaves_a_pending_intent_that_the_sweeper_settles(
            self, db: Database, settings: Settings, people: People,
            hanging: HangingStripe) -> None:
        stuck = settings.model_copy(update={"stripe_api_base": await hanging.start()})
        actor = Actor(people.patient.id, Role.PATIENT)
        call = checkout_service.create_checkout(db, PaymentsGateway(stuck), stuck, actor=actor,
                                                owner=people.owner, plan_code="basic_monthly")
        task = asyncio.create_task(call)
        await asyncio.wait_for(hanging.accepted.wait(), timeout=10)
        task.cancel()  # the process gives up (or dies) while Stripe has not answered
        with pytest.raises(asyncio.CancelledError):
            await task

        [pending] = await checkouts(db)
        assert pending.status is CheckoutStatus.PENDING and pending.stripe_session_id is None
        [requested] = await audit_rows(db)
        assert requested.event_type == "billing.checkout.requested"
        assert requested.actor_user_id == people.patient.id
        assert requested.idempotency_key == pending.idempotency_key

        early = await sweep_subscription_intents(db, settings)  # still within the grace period
        assert early.checkouts == [] and (await reload(db, CheckoutSession, pending.id)).status \
            is CheckoutStatus.PENDING
        swept = await sweep_subscription_intents(db, settings, now=later(settings))  # type: ignore[arg-type]
        assert swept.checkouts == [pending.id]
        settled = await reload(db, CheckoutSession, pending.id)
        assert settled.status is CheckoutStatus.OPEN and settled.url
        assert settled.stripe_session_id and settled.stripe_customer_id
        created = await audit_rows(db, event_type="billing.checkout.created")
        assert len(created) == 1 and created[0].outcome is Outcome.SUCCESS
        assert created[0].actor_user_id == people.patient.id
        assert created[0].idempotency_key == pending.idempotency_key
        again = await sweep_subscription_intents(db, settings, now=later(settings))  # type: ignore[arg-type]
        assert again.checkouts == []
        assert len(await audit_rows(db, event_type="billing.checkout.created")) == 1

    async def test_an_unreachable_stripe_answers_502_and_the_intent_stays_resolvable(
            self, db: Database, settings: Settings, factory: Factory, people: People) -> None:
        down = settings.model_copy(update={"stripe_api_base": f"http://127.0.0.1:{free_port()}"})
        app = create_app(down, database=db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as http:
            response = await http.post("/billing/checkout", headers=factory.headers(people.patient),
                                       json={**people.owner_body, "plan_code": "basic_monthly"})
        assert response.status_code == 502, response.text
        [pending] = await checkouts(db)
        assert pending.status is CheckoutStatus.PENDING  # unknown outcome: not failed
        swept = await sweep_subscription_intents(db, settings, now=later(settings))  # type: ignore[arg-type]
        assert swept.checkouts == [pending.id]
        assert (await reload(db, CheckoutSession, pending.id)).status is CheckoutStatus.OPEN
        ok = [r for r in await audit_rows(db, event_type="billing.checkout.created")
              if r.outcome is Outcome.SUCCESS]
        assert len(ok) == 1 and ok[0].actor_user_id == people.patient.id


class TestOneCheckoutPerOwner:
    async def test_owner_and_proxy_at_once_share_one_checkout(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        assigned = await client.post(f"/patients/{people.patient.id}/billing-managers",
                                     headers=factory.headers(people.patient),
                                     json={"proxy_id": str(people.proxy.id)})
        assert assigned.status_code == 201
        body = {**people.owner_body, "plan_code": "basic_monthly"}
        answers = await asyncio.gather(*[
            client.post("/billing/checkout", headers=factory.headers(who), json=body)
            for who in (people.patient, people.proxy, people.patient, people.proxy)])
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(201) == 1, [r.text for r in answers]
        assert set(statuses) <= {200, 201, 409}
        for refused in (r for r in answers if r.status_code == 409):
            assert refused.json()["error"] == "checkout_in_progress"
        [only] = await checkouts(db)
        assert only.status is CheckoutStatus.OPEN
        for shared in (r for r in answers if r.status_code == 200):
            assert shared.json()["id"] == str(only.id)
        assert len(await audit_rows(db, event_type="billing.checkout.requested")) + len(
            await audit_rows(db, event_type="billing.proxy.checkout.requested")) == 1
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(StripeCustomer)) == 1

        again = await client.post("/billing/checkout", headers=factory.headers(people.proxy),
                                  json=body)
        assert again.status_code == 200 and again.json()["id"] == str(only.id)
        assert len(await audit_rows(db, event_type="billing.proxy.checkout.reused")) >= 1
        other = await client.post("/billing/checkout", headers=factory.headers(people.patient),
                                  json={**people.owner_body, "plan_code": "plus_monthly"})
        assert other.status_code == 409 and other.json()["error"] == "checkout_open"
        assert str(only.id) in other.json()["detail"]

    async def test_an_expired_session_frees_the_owner(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        first = await client.post("/billing/checkout", headers=factory.headers(people.patient),
                                  json={**people.owner_body, "plan_code": "basic_monthly"})
        assert first.status_code == 201
        expires = first.json()["expires_at"]
        assert expires is not None
        row = await reload(db, CheckoutSession, first.json()["id"])
        assert row.expires_at is not None and row.created_at is not None
        ttl = (row.expires_at - row.created_at).total_seconds()
        assert abs(ttl - settings.checkout_session_ttl_seconds) < 5
        async with db.unit_of_work() as session:
            stored = await session.get(CheckoutSession, row.id)
            assert stored is not None
            stored.expires_at = utcnow() - timedelta(seconds=1)
        second = await client.post("/billing/checkout", headers=factory.headers(people.patient),
                                   json={**people.owner_body, "plan_code": "plus_monthly"})
        assert second.status_code == 201, second.text
        assert (await reload(db, CheckoutSession, row.id)).status is CheckoutStatus.EXPIRED

    async def test_the_database_refuses_a_second_live_subscription(
            self, db: Database, settings: Settings, people: People) -> None:
        await paid_subscription(db, settings, people.owner)
        with pytest.raises(IntegrityError):
            async with db.unit_of_work() as session:
                session.add(Subscription(
                    id=uuid.uuid4(), owner_type=people.owner.type, owner_id=people.owner.id,
                    plan_code="plus_monthly", status=SubscriptionStatus.TRIALING))
        async with db.unit_of_work() as session:  # a flagged duplicate is let in
            session.add(Subscription(
                id=uuid.uuid4(), owner_type=people.owner.type, owner_id=people.owner.id,
                plan_code="plus_monthly", status=SubscriptionStatus.ACTIVE,
                duplicate_of_id=uuid.uuid4()))
        async with db.unit_of_work() as session:  # and an ended one never counts
            session.add(Subscription(
                id=uuid.uuid4(), owner_type=people.owner.type, owner_id=people.owner.id,
                plan_code="plus_monthly", status=SubscriptionStatus.CANCELED))


class TestConcurrentFreeGrants:
    async def test_two_at_once_grant_one(self, client: httpx.AsyncClient, db: Database,
                                         factory: Factory, people: People) -> None:
        body = {**people.owner_body, "plan_code": "plus_monthly", "months": 2,
                "reason": "hardship programme"}
        answers = await asyncio.gather(*[
            client.post("/admin/free-grants", headers=factory.headers(people.admin), json=body)
            for _ in range(3)])
        assert sorted(r.status_code for r in answers) == [201, 409, 409], [r.text for r in answers]
        assert {r.json()["error"] for r in answers if r.status_code == 409} == {"subscription_exists"}
        async with db.sessionmaker() as session:
            live = (await session.scalars(select(Subscription).where(
                Subscription.owner_id == people.patient.id))).all()
        assert len(live) == 1


class TestConcurrentCancels:
    async def test_three_at_once_cancel_once(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        url = f"/billing/subscriptions/{subscription.id}/cancel"
        answers = await asyncio.gather(*[
            client.post(url, headers=factory.headers(who), json={"at_period_end": False})
            for who in (people.patient, people.admin, people.patient)])
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 409, 409], [r.text for r in answers]
        assert {r.json()["error"] for r in answers if r.status_code == 409} <= {
            "cancel_in_progress", "already_cancelled"}
        async with db.sessionmaker() as session:
            intents = (await session.scalars(select(SubscriptionCancellation))).all()
        assert [i.status for i in intents] == [IntentStatus.SUCCEEDED]  # one intent: one call
        ok = [r for r in await audit_rows(db, event_type="billing.subscription.cancelled")
              if r.outcome is Outcome.SUCCESS]
        assert len(ok) == 1 and ok[0].idempotency_key == intents[0].idempotency_key
        stored = await reload(db, Subscription, subscription.id)
        assert stored.status is SubscriptionStatus.CANCELED
        assert subscription.stripe_subscription_id is not None
        at_stripe = await PaymentsGateway(settings).client.v1.subscriptions.retrieve_async(
            subscription.stripe_subscription_id)
        assert at_stripe.status == "canceled"

    async def test_a_cancel_left_pending_is_settled_by_the_sweeper(
            self, db: Database, settings: Settings, people: People,
            hanging: HangingStripe) -> None:
        from billwatch.billing import cancellations

        subscription, _ = await paid_subscription(db, settings, people.owner)
        stuck = settings.model_copy(update={"stripe_api_base": await hanging.start()})
        task = asyncio.create_task(cancellations.cancel_subscription(
            db, PaymentsGateway(stuck), actor=Actor(people.patient.id, Role.PATIENT),
            subscription_id=subscription.id, at_period_end=True, reason="too dear"))
        await asyncio.wait_for(hanging.accepted.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await reload(db, Subscription, subscription.id)).cancel_at_period_end is False
        swept = await sweep_subscription_intents(db, settings, now=later(settings))  # type: ignore[arg-type]
        assert len(swept.cancellations) == 1
        assert (await reload(db, Subscription, subscription.id)).cancel_at_period_end is True
        [row] = [r for r in await audit_rows(db, event_type="billing.subscription.cancelled")]
        assert row.actor_user_id == people.patient.id and row.data["reason"] == "too dear"
        assert row.data["adopted_from"] == "sweeper"


class TestSQLiteBeginsImmediate:
    @pytest.fixture(autouse=True)
    def _sqlite_only(self, backend: str) -> None:
        if backend != "sqlite":
            pytest.skip("PostgreSQL has row locks; this is SQLite's write lock")

    async def test_a_transaction_holds_the_write_lock_from_its_first_read(
            self, db: Database, database_url: str) -> None:
        path = database_url.split("///", 1)[1]
        async with db.unit_of_work() as session:
            await session.scalar(select(func.count()).select_from(Subscription))  # a read only
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()

    async def test_concurrent_read_modify_writes_serialise(
            self, db: Database, factory: Factory) -> None:
        user = await factory.user(Role.PATIENT, name="0")
        from billwatch.accounts.models import User

        async def increment() -> None:
            async with db.unit_of_work() as session:
                row = await session.get(User, user.id)
                assert row is not None
                value = int(row.name)
                await asyncio.sleep(0)  # yield: let the others read, if they could
                row.name = str(value + 1)

        await asyncio.gather(*[increment() for _ in range(5)])
        assert (await reload(db, User, user.id)).name == "5"
