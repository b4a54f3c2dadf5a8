"""Webhook fixtures: billwatch served by uvicorn on loopback, with localstripe delivering to it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
import stripe
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select, update

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role, User
from billwatch.billing.models import (
    CheckoutSession,
    CheckoutStatus,
    StripeCustomer,
    Subscription,
    Transaction,
)
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from billwatch.runtime import Runtime
from billwatch.webhooks import store
from billwatch.webhooks.inbox import drain
from billwatch.webhooks.models import EventSource, EventStatus, StripeEvent, StripeEventAttempt
from billwatch.webhooks.processing import ProcessResult
from tests.support import TEST_WEBHOOK_SECRET, Factory, LocalStripe, free_port, snapshot
from tests.webhooks import stripe_events

T = TypeVar("T")
WEBHOOK_ID = "billwatch-webhook-tests"
"""One localstripe webhook registration, re-pointed at each test's server (localstripe has no delete)."""
NOWHERE = "http://127.0.0.1:9/webhooks/stripe"


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float = 20.0,
                     what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def business_state(db: Database) -> dict[str, list[str]]:
    """Every business row; the alert ledger (fed by the audit rows we write) is another domain."""
    return {name: rows for name, rows in (await snapshot(db)).items()
            if not name.startswith(("alert", "job_"))}


def metric(db: Database, name: str, **labels: str) -> float:
    """A sample of ``db``'s runtime (the test's own, shared with its app fixture)."""
    return db.required_runtime().metrics.registry.get_sample_value(name, labels) or 0.0


async def drain_inbox(app: FastAPI) -> list[ProcessResult]:
    """Process every due inbox event the way the app's processors do (tests run no lifespan)."""
    return await drain(app.state.db, app.state.gateway, app.state.settings)


async def drain_until_settled(app: FastAPI) -> list[ProcessResult]:
    """Drain, then drain again at each retry's due time, until no event is left retrying."""
    settings: Settings = app.state.settings
    results = await drain_inbox(app)
    at = datetime.now(UTC)
    for _ in range(settings.webhook_max_attempts):
        at += timedelta(seconds=settings.webhook_retry_max_seconds + 1)
        more = await drain(app.state.db, app.state.gateway, settings, now=at)
        if not more:
            break
        results += more
    return results


async def settled_status(db: Database, event_id: str) -> str:
    """The event's status once it has left ``received``/``processing`` (another drain may hold it)."""

    async def check() -> str | None:
        stored = await stored_event(db, event_id)
        assert stored is not None, f"{event_id} was acknowledged but not stored"
        unsettled = (EventStatus.RECEIVED, EventStatus.PROCESSING)
        return None if stored.status in unsettled else stored.status.value

    return await eventually(check, within=30, what=f"{event_id} to be processed")


@dataclass
class Delivered:
    """The endpoint's answer, and what became of the event once the inbox was drained."""

    response: httpx.Response
    outcome: str | None
    """``duplicate`` (already stored), else the event's status after processing
    (``processed``, ``ignored``, ``retrying``, ``failed``); None for a refused delivery."""

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def text(self) -> str:
        return self.response.text

    def json(self) -> Any:
        return self.response.json()


@dataclass
class Server:
    url: str
    """The webhook endpoint: ``http://127.0.0.1:<port>/webhooks/stripe``."""
    http: httpx.AsyncClient
    app: FastAPI | None = None
    """The app whose inbox each accepted delivery drains; None leaves events ``received``."""

    async def deliver(self, event: dict[str, Any] | bytes, *, header: str | None = None,
                      timestamp: int | None = None,
                      secrets: tuple[str, ...] = (TEST_WEBHOOK_SECRET,)) -> Delivered:
        """POST an event signed as Stripe signs it (or with the given header), then drain."""
        body = event if isinstance(event, bytes) else stripe_events.encode(event)
        signature = header if header is not None else stripe_events.sign(
            body, secrets=secrets, timestamp=timestamp)
        response = await self.http.post(self.url, content=body, headers={
            "Stripe-Signature": signature, "Content-Type": "application/json; charset=utf-8"})
        if response.status_code != 200:
            return Delivered(response, None)
        answer = response.json()
        if answer["status"] == "duplicate" or self.app is None:
            return Delivered(response, answer["status"])
        await drain_inbox(self.app)
        return Delivered(response, await settled_status(self.app.state.db, answer["event_id"]))


async def serve(app: FastAPI) -> AsyncIterator[Server]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), within=10, what="uvicorn to start")
    async with httpx.AsyncClient(timeout=30) as http:
        yield Server(f"http://127.0.0.1:{port}/webhooks/stripe", http, app)
    server.should_exit = True
    await task


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)


@pytest.fixture
async def asgi(client: httpx.AsyncClient, app: FastAPI) -> Server:
    """The webhook endpoint reached in process (no socket), draining the app's inbox."""
    return Server("/webhooks/stripe", client, app)


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[Server]:
    async for running in serve(app):
        yield running


async def point_webhook(localstripe: LocalStripe, url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{localstripe.url}/_config/webhooks/{WEBHOOK_ID}",
                                   data={"url": url, "secret": TEST_WEBHOOK_SECRET},
                                   headers={"Authorization": "Bearer sk_test_billwatch_tests"})
        response.raise_for_status()


class InboxLoop:
    """What the app's embedded runner does for the inbox: drain after every committed event."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def events_received(self) -> None:
        self.loop.call_soon_threadsafe(self.wake.set)

    async def run(self) -> None:
        while True:
            self.wake.clear()
            await drain_inbox(self.app)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)


@contextlib.asynccontextmanager
async def inbox_processed(app: FastAPI) -> AsyncIterator[None]:
    """Process the app's inbox in the background, woken by each stored event."""
    loop = InboxLoop(app)
    runtime: Runtime = app.state.runtime
    runtime.attach(inbox=loop)
    task = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        runtime.detach(loop)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def localstripe_delivers(localstripe: LocalStripe, server: Server,
                               app: FastAPI) -> AsyncIterator[Server]:
    """localstripe sends its signed events to this test's server, and nowhere once it ends;
    what it delivers is processed as the app's embedded runner would."""
    await point_webhook(localstripe, server.url)
    async with inbox_processed(app):
        yield server
    await point_webhook(localstripe, NOWHERE)


@pytest.fixture
async def localstripe_silent(localstripe: LocalStripe) -> None:
    """No delivery reaches billwatch: every event localstripe makes now is a missed delivery."""
    await point_webhook(localstripe, NOWHERE)


@pytest.fixture
def peer(settings: Settings) -> stripe.StripeClient:
    """The Stripe peer, driven directly the way Stripe's own pages and clock would."""
    return PaymentsGateway(settings).client


@dataclass
class Customer:
    """A patient with a Stripe customer linked by billwatch's own checkout."""

    patient: User
    stripe_id: str
    checkout: CheckoutSession

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef(OwnerType.PATIENT, self.patient.id)

    def metadata(self) -> dict[str, str]:
        meta = {"billwatch_checkout_id": str(self.checkout.id),
                "billwatch_owner_type": "patient", "billwatch_owner_id": str(self.patient.id),
                "billwatch_plan": self.checkout.plan_code}
        if self.checkout.manager_assignment_id is not None:
            meta["billwatch_proxy_id"] = str(self.checkout.created_by_user_id)
            meta["billwatch_assignment_id"] = str(self.checkout.manager_assignment_id)
        return meta


async def checkout_customer(client: httpx.AsyncClient, db: Database, factory: Factory, *,
                            plan_code: str = "basic_monthly", patient: User | None = None,
                            acting: User | None = None) -> Customer:
    """A patient who opened a checkout through billwatch (so billwatch made the Stripe customer)."""
    patient = patient or await factory.user(Role.PATIENT)
    response = await client.post("/billing/checkout", headers=factory.headers(acting or patient),
                                 json={"owner_type": "patient", "owner_id": str(patient.id),
                                       "plan_code": plan_code})
    assert response.status_code == 201, response.text
    async with db.sessionmaker() as session:
        checkout = await session.get(CheckoutSession, uuid.UUID(response.json()["id"]))
        assert checkout is not None
    return Customer(patient, checkout.stripe_customer_id, checkout)


async def pending_checkout(db: Database, factory: Factory, peer: stripe.StripeClient) -> Customer:
    """A patient's checkout left at phase 1 (its intent committed, the process died before it
    heard from Stripe), and the Stripe customer Stripe's side made for it."""
    patient = await factory.user(Role.PATIENT)
    async with db.unit_of_work() as session:
        checkout = CheckoutSession(
            id=uuid.uuid4(), owner_type=OwnerType.PATIENT, owner_id=patient.id,
            plan_code="basic_monthly", status=CheckoutStatus.PENDING,
            created_by_user_id=patient.id, idempotency_key=f"checkout:{uuid.uuid4()}")
        session.add(checkout)
    customer = await peer.v1.customers.create_async(params={"name": patient.name})
    return Customer(patient, customer.id, checkout)


async def linked_customer(db: Database, factory: Factory, peer: stripe.StripeClient) -> tuple[User, str]:
    """A patient and a Stripe customer linked directly (for tests that need no checkout)."""
    patient = await factory.user(Role.PATIENT)
    customer = await peer.v1.customers.create_async(params={"name": patient.name})
    async with db.unit_of_work() as session:
        session.add(StripeCustomer(id=uuid.uuid4(), owner_type=OwnerType.PATIENT, owner_id=patient.id,
                                   stripe_customer_id=customer.id, idempotency_key=f"test:{customer.id}"))
    return patient, customer.id


async def pay_by_card(peer: stripe.StripeClient, customer_id: str,
                      number: str = "4242424242424242") -> None:
    method = await peer.v1.payment_methods.create_async(params={
        "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2040, "cvc": "123"}})
    await peer.v1.payment_methods.attach_async(method.id, params={"customer": customer_id})
    await peer.v1.customers.update_async(
        customer_id, params={"invoice_settings": {"default_payment_method": method.id}})


async def subscribe(peer: stripe.StripeClient, customer_id: str, price: str,
                    metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """What Stripe Checkout does on completion: a paid subscription at the Stripe peer."""
    await pay_by_card(peer, customer_id)
    created = await peer.v1.subscriptions.create_async(params={
        "customer": customer_id, "items": [{"plan": price}], "metadata": metadata or {}})
    return created.to_dict()


async def stored_event(db: Database, event_id: str) -> StripeEvent | None:
    async with db.sessionmaker() as session:
        return (await session.scalars(
            select(StripeEvent).where(StripeEvent.stripe_event_id == event_id))).first()


async def attempts_of_event(db: Database, event_id: str) -> list[StripeEventAttempt]:
    """The stored event's attempts, first to last."""
    stored = await stored_event(db, event_id)
    assert stored is not None
    async with db.sessionmaker() as session:
        return await store.attempts_of(session, stored.id)


async def stored_as_failed(db: Database, event: dict[str, Any], error: str) -> None:
    """An event stored as its handler's last attempt left it: ``failed`` with that error."""
    async with db.unit_of_work() as session:
        row_id = await store.store(session, event, event, EventSource.WEBHOOK)
        await session.execute(update(StripeEvent).where(StripeEvent.id == row_id).values(
            status=EventStatus.FAILED, last_error=error, attempts=1))


async def subscription_row(db: Database, stripe_id: str) -> Subscription | None:
    async with db.sessionmaker() as session:
        return (await session.scalars(
            select(Subscription).where(Subscription.stripe_subscription_id == stripe_id))).first()


async def transactions_of(db: Database, owner_id: uuid.UUID) -> list[Transaction]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(
            select(Transaction).where(Transaction.owner_id == owner_id)
            .order_by(Transaction.created_at))).all())
