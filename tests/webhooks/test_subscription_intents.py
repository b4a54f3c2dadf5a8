"""Webhooks and our intents: adopting a pending checkout or cancel, flagging a second subscription."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import select

from billwatch.accounts.models import Role
from billwatch.alerts.models import Alert
from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.billing.models import (
    CancelMode,
    CheckoutSession,
    CheckoutStatus,
    IntentStatus,
    Subscription,
    SubscriptionCancellation,
)
from billwatch.config import Settings
from billwatch.db import Database
from tests.support import Factory, LocalStripe, audit_rows, reload
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Customer,
    Server,
    checkout_customer,
    pending_checkout,
    subscribe,
    subscription_row,
)


async def subscribed(asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
                     peer: stripe.StripeClient) -> tuple[Customer, dict[str, Any]]:
    """A customer who checked out, and the subscription at the peer whose creation billwatch
    has processed (its event dated 10 s back, so later events of the test come after it)."""
    customer = await checkout_customer(client, db, factory)
    sub = await subscribe(peer, customer.stripe_id, "billwatch_basic_monthly", customer.metadata())
    created = se.event("customer.subscription.created", se.subscription(
        sub_id=sub["id"], customer=customer.stripe_id, price="billwatch_basic_monthly"),
        created=se.now() - 10)
    assert (await asgi.deliver(created)).outcome == "processed"
    return customer, sub


class TestSecondLiveSubscription:
    async def test_is_recorded_flagged_and_alerted(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        customer, first = await subscribed(asgi, client, db, factory, peer)
        # a second subscription made on Stripe's side (a second checkout tab, the Dashboard)
        second_id = se.new_id("sub")
        second = se.event("customer.subscription.created", se.subscription(
            sub_id=second_id, customer=customer.stripe_id, price="billwatch_plus_monthly"))
        response = await asgi.deliver(second)
        assert response.outcome == "processed", response.text

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
        assert replay.outcome in ("duplicate", "processed")
        assert len(await audit_rows(db, event_type="billing.subscription.duplicate_flagged")) == 1


class TestAdoption:
    async def test_checkout_completed_settles_a_pending_checkout_as_its_actor(
            self, asgi: Server, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        pending = await pending_checkout(db, factory, peer)
        sub = await subscribe(peer, pending.stripe_id, "billwatch_basic_monthly", pending.metadata())
        completed = se.event("checkout.session.completed", se.checkout_session(
            session_id=se.new_id("cs"), customer=pending.stripe_id, subscription_id=sub["id"],
            metadata=pending.metadata(), amount=1500))
        assert (await asgi.deliver(completed)).outcome == "processed"

        settled = await reload(db, CheckoutSession, pending.checkout.id)
        assert settled.status is CheckoutStatus.COMPLETE
        assert settled.stripe_customer_id == pending.stripe_id
        [created] = await audit_rows(db, event_type="billing.checkout.created")
        assert created.actor_user_id == pending.patient.id and created.outcome is Outcome.SUCCESS
        assert created.data["adopted_from"] == "checkout.session.completed"
        row = await subscription_row(db, sub["id"])
        assert row is not None and row.owner_id == pending.patient.id

    async def test_a_subscription_update_settles_a_pending_cancel_as_its_actor(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        customer, sub = await subscribed(asgi, client, db, factory, peer)
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
        assert (await asgi.deliver(updated)).outcome == "processed"

        assert (await reload(db, SubscriptionCancellation, intent.id)).status is IntentStatus.SUCCEEDED
        assert (await reload(db, Subscription, row.id)).cancel_at_period_end is True
        [cancelled] = await audit_rows(db, event_type="billing.subscription.cancelled")
        assert cancelled.actor_user_id == customer.patient.id
        assert cancelled.data["adopted_from"] == "customer.subscription.updated"
        assert cancelled.data["reason"] == "moving"


class LockProbe:
    """A proxy in front of the Stripe peer: on each request it first tries SQLite's write lock.

    If the webhook's transaction were still open when it reads the subscription from Stripe,
    ``BEGIN IMMEDIATE`` with no wait would fail here.
    """

    def __init__(self, upstream: str, database_path: str) -> None:
        self.upstream = upstream
        self.database_path = database_path
        self.seen: list[tuple[str, bool]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def _lock_is_free(self) -> bool:
        conn = sqlite3.connect(self.database_path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        length = int(headers.get("Content-Length") or headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        self.seen.append((f"{method} {path.split('?')[0]}", self._lock_is_free()))
        forwarded = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        async with httpx.AsyncClient(base_url=self.upstream) as http:
            answer = await http.request(method, path, headers=forwarded, content=body)
        writer.write(f"HTTP/1.1 {answer.status_code} OK\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(answer.content)}\r\nConnection: close\r\n\r\n"
                     .encode() + answer.content)
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TestStripeReadsOutsideTheTransaction:
    async def test_a_same_second_update_reads_stripe_with_no_transaction_open(
            self, backend: str, database_url: str, db: Database, settings: Settings,
            factory: Factory, peer: stripe.StripeClient, localstripe: LocalStripe,
            localstripe_silent: None) -> None:
        if backend != "sqlite":
            pytest.skip("the probe uses SQLite's write lock to see an open transaction")
        probe = LockProbe(localstripe.url, database_url.split("///", 1)[1])
        proxied = settings.model_copy(update={"stripe_api_base": await probe.start()})
        try:
            proxied_app = create_app(proxied, database=db)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(
                    app=proxied_app), base_url="http://testserver") as http:
                asgi = Server("/webhooks/stripe", http, proxied_app)
                customer = await checkout_customer(http, db, factory)
                sub = await subscribe(peer, customer.stripe_id, "billwatch_basic_monthly",
                                      customer.metadata())
                at = se.now() - 5
                for cancelling in (False, True):  # the second is of the same second: ask Stripe
                    event = se.event("customer.subscription.updated" if cancelling else
                                     "customer.subscription.created", se.subscription(
                                         sub_id=sub["id"], customer=customer.stripe_id,
                                         price="billwatch_basic_monthly",
                                         cancel_at_period_end=cancelling), created=at)
                    response = await asgi.deliver(event)
                    assert response.outcome == "processed", response.text
        finally:
            await probe.stop()
        reads = [free for call, free in probe.seen if call == f"GET /v1/subscriptions/{sub['id']}"]
        assert reads == [True], probe.seen
        row = await subscription_row(db, sub["id"])
        assert row is not None and row.cancel_at_period_end is False  # Stripe's state, not the event's
