"""Stripe does not deliver in order: a late event never regresses a subscription."""

from __future__ import annotations

import httpx
import stripe

from billwatch.accounts.models import User
from billwatch.audit.events import Outcome
from billwatch.billing.models import SubscriptionStatus
from billwatch.db import Database
from tests.support import Factory, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, linked_customer, metric, subscribe, subscription_row
from tests.webhooks.test_idempotency import peer_events

PRICE = "billwatch_basic_yearly"
T = 1_790_000_000


async def started(server: Server, db: Database, factory: Factory,
                  peer: stripe.StripeClient) -> tuple[User, str, str]:
    """A subscription billwatch knows, created by a current-shape event at time T."""
    patient, customer_id = await linked_customer(db, factory, peer)
    sub_id = se.new_id("sub")
    created = se.subscription(sub_id=sub_id, customer=customer_id, price=PRICE, period=(T, T + 365 * 86400))
    response = await server.deliver(se.event("customer.subscription.created", created, created=T))
    assert response.outcome == "processed", response.text
    return patient, customer_id, sub_id


async def deliver_update(server: Server, sub_id: str, customer_id: str, at: int, *,
                         event_type: str = "customer.subscription.updated", **state: object) -> str:
    obj = se.subscription(sub_id=sub_id, customer=customer_id, price=PRICE,
                          period=(T, T + 365 * 86400), **state)  # type: ignore[arg-type]
    response = await server.deliver(se.event(event_type, obj, created=at))
    assert response.status_code == 200, response.text
    status: str = response.outcome
    return status


class TestOutOfOrder:
    async def test_older_update_after_a_newer_one_is_ignored(
            self, server: Server, db: Database, factory: Factory, peer: stripe.StripeClient) -> None:
        patient, customer_id, sub_id = await started(server, db, factory, peer)
        newer = await deliver_update(server, sub_id, customer_id, T + 20, status="past_due")
        older = await deliver_update(server, sub_id, customer_id, T + 10, status="active")
        assert (newer, older) == ("processed", "ignored")
        row = await subscription_row(db, sub_id)
        assert row is not None and row.status is SubscriptionStatus.PAST_DUE
        assert row.stripe_updated_at is not None and int(row.stripe_updated_at.timestamp()) == T + 20
        updates = await audit_rows(db, event_type="billing.subscription.updated")
        assert [u.data["changes"]["status"] for u in updates] == [["active", "past_due"]]
        ignored = [r for r in await audit_rows(db, event_type="billing.webhook.received")
                   if r.data["status"] == "ignored"]
        assert [r.data["note"] for r in ignored] == ["older than the state already applied"]
        assert ignored[0].owner_id == patient.id

    async def test_a_deletion_is_never_undone_by_a_late_update(
            self, server: Server, db: Database, factory: Factory, peer: stripe.StripeClient) -> None:
        _, customer_id, sub_id = await started(server, db, factory, peer)
        ended = await deliver_update(server, sub_id, customer_id, T + 10,
                                     event_type="customer.subscription.deleted", status="canceled",
                                     canceled_at=T + 10, ended_at=T + 10)
        # an update stamped later than the deletion (clock skew, or a metadata edit) still loses
        late = await deliver_update(server, sub_id, customer_id, T + 30, status="active")
        assert (ended, late) == ("processed", "ignored")
        row = await subscription_row(db, sub_id)
        assert row is not None and row.status is SubscriptionStatus.CANCELED
        assert row.ended_at is not None and int(row.ended_at.timestamp()) == T + 10
        assert len(await audit_rows(db, event_type="billing.subscription.cancelled")) == 1

    async def test_a_late_deletion_still_ends_the_subscription(
            self, server: Server, db: Database, factory: Factory, peer: stripe.StripeClient) -> None:
        _, customer_id, sub_id = await started(server, db, factory, peer)
        assert await deliver_update(server, sub_id, customer_id, T + 50, status="active",
                                    cancel_at_period_end=True) == "processed"
        assert await deliver_update(server, sub_id, customer_id, T + 40,
                                    event_type="customer.subscription.deleted", status="canceled",
                                    ended_at=T + 40) == "processed"
        row = await subscription_row(db, sub_id)
        assert row is not None and row.status is SubscriptionStatus.CANCELED
        assert int(row.stripe_updated_at.timestamp()) == T + 50  # type: ignore[union-attr]

    async def test_same_second_reads_the_subscription_back_from_stripe(
            self, server: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        _, customer_id = await linked_customer(db, factory, peer)
        sub = await subscribe(peer, customer_id, PRICE)
        created = (await peer_events(peer, customer_id, sub["created"]))["customer.subscription.created"]
        assert (await server.deliver(created)).outcome == "processed"
        # At Stripe the owner schedules the cancellation; two updates of that same second reach
        # us, the one showing it first, then one still without it (their order is unknowable).
        await peer.v1.subscriptions.update_async(sub["id"], params={"cancel_at_period_end": True})
        same_second = created["created"]
        assert await deliver_update(server, sub["id"], customer_id, same_second, status="active",
                                    cancel_at_period_end=True) == "processed"
        assert await deliver_update(server, sub["id"], customer_id, same_second, status="active",
                                    cancel_at_period_end=False) == "processed"
        row = await subscription_row(db, sub["id"])
        assert row is not None and row.cancel_at_period_end is True  # what Stripe says now
        cancelled = await audit_rows(db, event_type="billing.subscription.cancelled")
        assert [(c.data["mode"], c.actor_name) for c in cancelled] == [("period_end", "stripe")]


def cancellations(db: Database) -> tuple[float, float]:
    """billing_subscriptions_cancelled_total for patients: (by the owner, by Stripe)."""
    by = {who: metric(db, "billing_subscriptions_cancelled_total", owner_type="patient",
                      cancelled_by=who)
          for who in ("owner", "stripe")}
    return by["owner"], by["stripe"]


class TestCancellationCountedOnce:
    async def test_cancel_through_billwatch_then_stripes_events(
            self, client: httpx.AsyncClient, server: Server, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        patient, customer_id = await linked_customer(db, factory, peer)
        sub = await subscribe(peer, customer_id, PRICE)
        created = (await peer_events(peer, customer_id, sub["created"]))["customer.subscription.created"]
        assert (await server.deliver(created)).outcome == "processed"
        row = await subscription_row(db, sub["id"])
        assert row is not None
        before = cancellations(db)

        response = await client.post(f"/billing/subscriptions/{row.id}/cancel",
                                     headers=factory.headers(patient), json={"at_period_end": True})
        assert response.status_code == 200, response.text
        at = created["created"]
        assert await deliver_update(server, sub["id"], customer_id, at + 5, status="active",
                                    cancel_at_period_end=True) == "processed"
        assert await deliver_update(server, sub["id"], customer_id, at + 9,
                                    event_type="customer.subscription.deleted", status="canceled",
                                    cancel_at_period_end=True, canceled_at=at + 5,
                                    ended_at=at + 9) == "processed"

        cancelled = await audit_rows(db, event_type="billing.subscription.cancelled")
        assert [(c.actor_user_id, c.outcome) for c in cancelled] == [(patient.id, Outcome.SUCCESS)]
        updated = await audit_rows(db, event_type="billing.subscription.updated")
        assert updated[-1].data["changes"]["status"] == ["active", "canceled"]
        assert cancellations(db) == (before[0] + 1, before[1])
        final = await subscription_row(db, sub["id"])
        assert final is not None and final.status is SubscriptionStatus.CANCELED
