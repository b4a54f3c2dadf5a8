"""Overrides that end on their own: free grants at their end date, timed discounts at ends_at.

Each is ended exactly once and audited, however many schedulers run at the same moment.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import stripe
from sqlalchemy import select, update

from billwatch.accounts.actor import Actor
from billwatch.accounts.models import Role
from billwatch.billing import overrides
from billwatch.billing.expiry import STALE_GRACE, expire_due_overrides
from billwatch.billing.models import (
    BillingOverride,
    OverrideKind,
    OverrideState,
    Subscription,
    SubscriptionStatus,
)
from billwatch.bootstrap import open_database
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.errors import PaymentProviderError
from billwatch.jobs import tasks
from billwatch.jobs.celery_app import OVERRIDES_EXPIRE_TASK, beat_schedule
from billwatch.jobs.embedded import EmbeddedRunner
from billwatch.payments.gateway import PaymentsGateway, stripe_refused
from tests.billing.helpers import create_override, standin_renewal
from tests.jobs.workers import Worker, new_queue, publisher, worker_settings
from tests.support import Factory, People, audit_rows, free_port, paid_subscription, reload


async def free_grant(client: httpx.AsyncClient, factory: Factory, people: People) -> dict[str, str]:
    response = await client.post("/admin/free-grants", headers=factory.headers(people.admin),
                                 json={**people.owner_body, "plan_code": "plus_monthly",
                                       "months": 1, "reason": "clinical trial participant"})
    assert response.status_code == 201, response.text
    grant: dict[str, str] = response.json()
    return grant


class TestFreeGrantExpiry:
    async def test_two_schedulers_at_once_expire_it_exactly_once(
            self, client: httpx.AsyncClient, db: Database, database_url: str, factory: Factory,
            people: People, settings: Settings) -> None:
        grant = await free_grant(client, factory, people)
        ends_at = datetime.fromisoformat(grant["ends_at"])
        other = open_database(settings)  # a second scheduler process: its own engine, runtime
        try:
            results = await asyncio.gather(
                expire_due_overrides(db, settings, now=ends_at + timedelta(seconds=1)),
                expire_due_overrides(other, settings, now=ends_at + timedelta(seconds=1)))
        finally:
            await other.dispose()
        assert sorted(r["free_grants_expired"] for r in results) == [0, 1]
        override = await reload(db, BillingOverride, grant["id"])
        assert override.state is OverrideState.EXPIRED and override.expired_at is not None
        subscription = await reload(db, Subscription, grant["subscription_id"])
        assert subscription.status is SubscriptionStatus.CANCELED
        assert subscription.ended_at == ends_at
        [row] = await audit_rows(db, event_type="billing.free_subscription.expired")
        assert row.actor_name == "job:expire-overrides" and row.data["ended_subscription_id"] == str(
            subscription.id)
        again = await expire_due_overrides(db, settings, now=ends_at + timedelta(days=1))
        assert again["free_grants_expired"] == 0
        assert len(await audit_rows(db, event_type="billing.free_subscription.expired")) == 1

    async def test_nothing_ends_before_its_end_date(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        grant = await free_grant(client, factory, people)
        ends_at = datetime.fromisoformat(grant["ends_at"])
        result = await expire_due_overrides(db, settings, now=ends_at - timedelta(seconds=1))
        assert result == {"free_grants_expired": 0, "adjustments_expired": 0, "intents_resumed": 0}
        assert (await reload(db, BillingOverride, grant["id"])).state is OverrideState.ACTIVE

    async def test_the_embedded_runner_tick_expires_it(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        grant = await free_grant(client, factory, people)
        ends_at = datetime.fromisoformat(grant["ends_at"])
        runner = EmbeddedRunner(db, settings, schedule=True)
        await runner.tick(now=ends_at + timedelta(minutes=1))
        assert (await reload(db, BillingOverride, grant["id"])).state is OverrideState.EXPIRED
        assert len(await audit_rows(db, event_type="billing.free_subscription.expired")) == 1

    async def test_an_expired_grant_cannot_be_revoked(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        grant = await free_grant(client, factory, people)
        ends_at = datetime.fromisoformat(grant["ends_at"])
        await expire_due_overrides(db, settings, now=ends_at + timedelta(seconds=1))
        response = await client.post(f"/admin/overrides/{grant['id']}/revoke",
                                     headers=factory.headers(people.admin),
                                     json={"reason": "too late"})
        assert response.status_code == 409 and response.json()["error"] == "already_expired"


class TestTimedDiscountExpiry:
    async def test_removed_at_stripe_at_ends_at_and_audited_once(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        ends_at = datetime.now(UTC) + timedelta(days=30)
        created = await create_override(client, factory, people, "discount", percent_off=50,
                                        reason="first month", ends_at=ends_at.isoformat())
        assert created.status_code == 201, created.text
        gateway = PaymentsGateway(settings)
        results = await asyncio.gather(
            *(expire_due_overrides(db, settings, now=ends_at + timedelta(seconds=1),
                                   gateway=gateway) for _ in range(2)))
        assert sorted(r["adjustments_expired"] for r in results) == [0, 1]
        override = await reload(db, BillingOverride, created.json()["id"])
        assert override.state is OverrideState.EXPIRED and override.stripe_coupon_id
        with pytest.raises(stripe.InvalidRequestError):
            await gateway.client.v1.coupons.retrieve_async(override.stripe_coupon_id)
        renewal = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert renewal.amount_paid_cents == 1500
        [row] = await audit_rows(db, event_type="billing.override.expired")
        assert row.actor_name == "job:expire-overrides"
        assert row.data["stripe_coupon_id"] == override.stripe_coupon_id


def test_the_beat_runs_the_expiry_every_minute() -> None:
    entry = beat_schedule()["overrides-expire"]
    assert entry == {"task": OVERRIDES_EXPIRE_TASK, "schedule": 60.0}
    assert OVERRIDES_EXPIRE_TASK in tasks.app.tasks


class TestHalfDoneOverrides:
    """A process that dies between its Stripe call and its settlement leaves the override
    ``pending`` or ``revoking``; the scheduler's sweep finishes it, once, for the same admin."""

    async def test_an_applied_discount_never_settled_is_settled_once_for_its_admin(
            self, db: Database, database_url: str, people: People, settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        gateway = PaymentsGateway(settings)
        admin = Actor(people.admin.id, Role.ADMIN)
        async with db.unit_of_work() as session:
            intent = await overrides.reserve_override(
                session, settings, actor=admin, owner=people.owner,
                kind=OverrideKind.DISCOUNT, reason="hardship", percent_off=20,
                amount_off_cents=None, plan_code=None, ends_at=None)
        await overrides.apply_at_stripe(gateway, intent)  # ... and the process dies here
        early = await expire_due_overrides(db, settings, gateway=gateway)
        assert early["intents_resumed"] == 0
        assert (await reload(db, BillingOverride, intent.id)).state is OverrideState.PENDING

        later = datetime.now(UTC) + STALE_GRACE + timedelta(seconds=1)
        other = open_database(settings)  # another process
        try:
            await asyncio.gather(expire_due_overrides(db, settings, gateway=gateway, now=later),
                                 expire_due_overrides(other, settings, gateway=gateway, now=later))
        finally:
            await other.dispose()
        override = await reload(db, BillingOverride, intent.id)
        assert override.state is OverrideState.ACTIVE and override.stripe_coupon_id
        [row] = await audit_rows(db, event_type="billing.override.created")
        assert row.actor_user_id == people.admin.id
        renewal = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert renewal.amount_paid_cents == 1200

    async def test_a_revoke_that_reached_stripe_but_not_the_database_is_finished(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        created = await create_override(client, factory, people, "discount", percent_off=30)
        assert created.status_code == 201, created.text
        gateway = PaymentsGateway(settings)
        override_id = uuid.UUID(created.json()["id"])
        async with db.unit_of_work() as session:
            assert await overrides.claim_active(session, override_id,
                                                target=OverrideState.REVOKING, values={
                                                    "revoked_by_user_id": people.admin.id,
                                                    "revoke_reason": "review closed",
                                                    "state_changed_at": datetime.now(UTC)})
        override = await reload(db, BillingOverride, override_id)
        assert override.stripe_coupon_id is not None
        await gateway.remove_discount(subscription.stripe_subscription_id,
                                      coupon_id=override.stripe_coupon_id,
                                      idempotency_key=overrides.revoke_key(override_id))
        # ... the process died before settling; a second revoke is refused meanwhile
        refused = await client.post(f"/admin/overrides/{override_id}/revoke",
                                    headers=factory.headers(people.admin),
                                    json={"reason": "again"})
        assert refused.status_code == 409 and refused.json()["error"] == "revoke_in_progress"
        later = datetime.now(UTC) + STALE_GRACE + timedelta(seconds=1)
        result = await expire_due_overrides(db, settings, gateway=gateway, now=later)
        assert result["intents_resumed"] == 1
        settled = await reload(db, BillingOverride, override_id)
        assert settled.state is OverrideState.REVOKED and settled.revoked_at is not None
        [row] = [r for r in await audit_rows(db, event_type="billing.override.revoked")
                 if r.outcome.value == "success"]
        assert row.actor_user_id == people.admin.id and row.data["reason"] == "review closed"
        renewal = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert renewal.amount_paid_cents == 1500

    async def test_no_answer_from_stripe_leaves_the_intent_pending_not_failed(
            self, db: Database, people: People, settings: Settings) -> None:
        await paid_subscription(db, settings, people.owner)
        silent = settings.model_copy(update={"stripe_api_base": f"http://127.0.0.1:{free_port()}"})
        with pytest.raises(PaymentProviderError) as raised:
            await overrides.create_override(
                db, PaymentsGateway(silent), settings, actor=Actor(people.admin.id, Role.ADMIN),
                owner=people.owner, kind=OverrideKind.PAYMENT_EXEMPTION, reason="inpatient")
        assert not stripe_refused(raised.value)
        async with db.sessionmaker() as session:
            [override] = (await session.scalars(select(BillingOverride))).all()
        assert override.state is OverrideState.PENDING  # Stripe may have paused it: the sweep asks
        later = datetime.now(UTC) + STALE_GRACE + timedelta(seconds=1)
        result = await expire_due_overrides(db, settings, now=later)
        assert result["intents_resumed"] == 1
        assert (await reload(db, BillingOverride, override.id)).state is OverrideState.ACTIVE


class TestThroughCeleryWorkers:
    async def test_two_beat_firings_on_real_workers_expire_a_grant_once(
            self, client: httpx.AsyncClient, db: Database, database_url: str, factory: Factory,
            people: People, tmp_path: Path) -> None:
        grant = await free_grant(client, factory, people)
        async with db.unit_of_work() as session:  # its end date has passed
            await session.execute(update(BillingOverride)
                                  .where(BillingOverride.id == uuid.UUID(grant["id"]))
                                  .values(ends_at=datetime.now(UTC) - timedelta(minutes=1)))
        settings = worker_settings(database_url, free_port(), new_queue())
        celery = publisher(settings)
        worker = Worker(settings, tmp_path / "workers", concurrency=2)
        try:
            sent = [celery.send_task(OVERRIDES_EXPIRE_TASK) for _beat in range(2)]
            results = [await asyncio.to_thread(task.get, timeout=60) for task in sent]
        finally:
            worker.stop()
            celery.close()
        assert sorted(r["free_grants_expired"] for r in results) == [0, 1]
        assert (await reload(db, BillingOverride, grant["id"])).state is OverrideState.EXPIRED
        assert len(await audit_rows(db, event_type="billing.free_subscription.expired")) == 1
