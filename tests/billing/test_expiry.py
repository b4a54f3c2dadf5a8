"""Overrides that end on their own: free grants at their end date, timed discounts at ends_at.

Each is ended exactly once and audited, however many schedulers run at the same moment.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import stripe

from billwatch.billing.expiry import expire_due_overrides
from billwatch.billing.models import BillingOverride, OverrideState, Subscription, SubscriptionStatus
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import tasks
from billwatch.jobs.celery_app import OVERRIDES_EXPIRE_TASK, beat_schedule
from billwatch.jobs.embedded import EmbeddedRunner
from billwatch.payments.gateway import PaymentsGateway
from tests.support import Factory, People, audit_rows, paid_subscription, reload


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
        other = Database(database_url)  # a second scheduler process: its own engine and pool
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
        assert result == {"free_grants_expired": 0, "adjustments_expired": 0}
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
        created = await client.post("/admin/overrides", headers=factory.headers(people.admin),
                                    json={**people.owner_body, "kind": "discount",
                                          "percent_off": 50, "reason": "first month",
                                          "ends_at": ends_at.isoformat()})
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
        renewal = await gateway.standin_renewal(subscription.stripe_subscription_id)
        assert renewal.amount_paid_cents == 1500
        [row] = await audit_rows(db, event_type="billing.override.expired")
        assert row.actor_name == "job:expire-overrides"
        assert row.data["stripe_coupon_id"] == override.stripe_coupon_id


def test_the_beat_runs_the_expiry_every_minute() -> None:
    entry = beat_schedule()["overrides-expire"]
    assert entry == {"task": OVERRIDES_EXPIRE_TASK, "schedule": 60.0}
    assert OVERRIDES_EXPIRE_TASK in tasks.app.tasks
