"""PostgreSQL restarted during a load of 2,000 signed webhook deliveries.

``billwatch serve`` (two workers, each with its embedded inbox processor) runs on a private
PostgreSQL server (:mod:`tests.pgserver`; the shared one is never restarted). Several senders
deliver ``invoice.paid`` events the way Stripe does: an event is sent until it gets a 2xx, and a
delivery that got none (a 500, a dropped connection, a timeout) is sent again a little later.
Part way through, the server is stopped and started again a few seconds later. Then every
event must be stored, processed and applied exactly once, counted in the rows it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from billwatch.accounts.models import OwnerType, Role, User
from billwatch.audit.models import AuditLog
from billwatch.billing.models import (
    StripeCustomer,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
    Transaction,
    TransactionKind,
)
from billwatch.db import Database, utcnow
from billwatch.redaction import redact_text
from billwatch.webhooks.models import UNFINISHED, AttemptOutcome, StripeEvent, StripeEventAttempt
from tests.pgserver import PgServer, private_server
from tests.support import TEST_TOKEN_SECRET, TEST_WEBHOOK_SECRET, free_port, migrate, stop_process
from tests.webhooks import stripe_events as se

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

EVENTS = 2000
SUBSCRIBERS = 400
SENDERS = 8
RESTART_AFTER = 600
"""Acknowledged deliveries before the server is stopped: the load is well under way."""
DOWN_SECONDS = 3.0
PRICE = "billwatch_basic_monthly"
PLAN = "basic_monthly"
AMOUNT = 2900
LOAD_DEADLINE = 90.0
DRAIN_DEADLINE = 60.0
"""Bounds for a busy machine; the load has taken 19 to 42 s, and the drain 5 to 17 s more."""

APP_ENV = {
    "BILLWATCH_ENV": "development",
    "BILLWATCH_STRIPE_API_BASE": "http://127.0.0.1:9",  # every subscription is known: no reads
    "BILLWATCH_STRIPE_API_KEY": "sk_test_billwatch_tests",
    "BILLWATCH_STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
    "BILLWATCH_TOKEN_SECRET": TEST_TOKEN_SECRET,
    "BILLWATCH_LOG_LEVEL": "WARNING",
    "BILLWATCH_EMBEDDED_SCHEDULER": "false",
    "BILLWATCH_ENABLE_BILLING_ALERTS": "false",
    # a processor cut off mid-batch holds its claims for a lease: short, so the test drains soon
    "BILLWATCH_WEBHOOK_LEASE_SECONDS": "5",
    "BILLWATCH_WEBHOOK_BATCH_SIZE": "20",
    "BILLWATCH_WEBHOOK_POLL_SECONDS": "0.5",
    "BILLWATCH_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "BILLWATCH_WEBHOOK_RETRY_MAX_SECONDS": "2",
}


@dataclass
class Delivery:
    """One event as Stripe holds it: its body, every answer it got, and its acknowledgement."""

    event_id: str
    invoice_id: str
    body: bytes
    answers: list[str] = field(default_factory=list)
    """``"200 received"``, ``"200 duplicate"``, ``"500"``, or the transport error's name."""
    acked: str | None = None
    """The 2xx answer's ``status`` (``received`` or ``duplicate``); None until one came."""
    acked_after_restart: bool = False


class StripeLike:
    """Senders that deliver each event until it gets a 2xx, re-sending later, as Stripe does.

    Stripe waits minutes to hours between attempts; these wait 0.2 s doubling to 2 s, so a
    few seconds of outage are retried within the test.
    """

    def __init__(self, url: str, deliveries: list[Delivery]) -> None:
        self.url = url
        self.deliveries = deliveries
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        for delivery in deliveries:
            self.queue.put_nowait(delivery)
        self.acked = 0
        self.all_acked = asyncio.Event()
        self.restart_due = asyncio.Event()
        """Set once ``RESTART_AFTER`` deliveries are acknowledged."""
        self.restarted = False
        self.resends: set[asyncio.TimerHandle] = set()

    async def run(self, senders: int) -> None:
        limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
            tasks = [asyncio.create_task(self._send(http)) for _ in range(senders)]
            done = asyncio.create_task(self.all_acked.wait())
            try:
                await asyncio.wait([done, *tasks], timeout=LOAD_DEADLINE,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in [done, *tasks]:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for handle in self.resends:
                    handle.cancel()
        for result in results:  # a sender that found a wrong answer
            if isinstance(result, Exception):
                raise result
        assert self.all_acked.is_set(), \
            f"only {self.acked} of {len(self.deliveries)} events acknowledged in {LOAD_DEADLINE}s"

    async def _send(self, http: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delivery = await self.queue.get()
            answer = await self._post(http, delivery)
            delivery.answers.append(answer)
            if answer.startswith("2"):
                delivery.acked = answer.split(" ", 1)[1]
                delivery.acked_after_restart = self.restarted
                self.acked += 1
                if self.acked == RESTART_AFTER:
                    self.restart_due.set()
                if self.acked == len(self.deliveries):
                    self.all_acked.set()
                continue
            wait = min(0.2 * 2 ** (len(delivery.answers) - 1), 2.0)
            handle = loop.call_later(wait, self.queue.put_nowait, delivery)
            self.resends.add(handle)

    async def _post(self, http: httpx.AsyncClient, delivery: Delivery) -> str:
        headers = {"Stripe-Signature": se.sign(delivery.body),  # signed afresh each attempt
                   "Content-Type": "application/json; charset=utf-8"}
        try:
            response = await http.post(self.url, content=delivery.body, headers=headers)
        except httpx.TransportError as error:
            return type(error).__name__
        if 200 <= response.status_code < 300:
            answer = response.json()
            assert answer["event_id"] == delivery.event_id, answer
            return f"{response.status_code} {answer['status']}"
        return str(response.status_code)


def plain_id(prefix: str, n: int) -> str:
    """A Stripe-like id the redactor keeps whole, so rows can be matched to events by id.

    Random base-62 ids now and then hold a card-security-code shape (``...4cvVzjrImW830``),
    which the redactor masks in the stored id and in the answer.
    """
    made = f"{prefix}_restart{n:05d}"
    assert redact_text(made) == made, made
    return made


async def seed_subscriptions(db: Database) -> list[tuple[str, str]]:
    """Patients, each with a Stripe customer and an active subscription billwatch knows."""
    now = utcnow()
    users = [uuid.uuid4() for _ in range(SUBSCRIBERS)]
    ids = [(plain_id("sub", n), plain_id("cus", n)) for n in range(SUBSCRIBERS)]
    async with db.unit_of_work() as session:
        await session.execute(insert(User), [
            {"id": user, "email": f"patient-{n}@restart.test", "name": f"Patient {n}",
             "role": Role.PATIENT} for n, user in enumerate(users)])
        await session.execute(insert(StripeCustomer), [
            {"id": uuid.uuid4(), "owner_type": OwnerType.PATIENT, "owner_id": user,
             "stripe_customer_id": customer, "idempotency_key": f"test:{customer}"}
            for user, (_, customer) in zip(users, ids, strict=True)])
        await session.execute(insert(Subscription), [
            {"id": uuid.uuid4(), "owner_type": OwnerType.PATIENT, "owner_id": user,
             "plan_code": PLAN, "status": SubscriptionStatus.ACTIVE,
             "source": SubscriptionSource.STRIPE, "stripe_subscription_id": sub,
             "stripe_customer_id": customer, "current_period_start": now,
             "current_period_end": now, "cancel_at_period_end": False, "created_at": now,
             "updated_at": now}
            for user, (sub, customer) in zip(users, ids, strict=True)])
    return ids


def invoice_deliveries(subscriptions: list[tuple[str, str]]) -> list[Delivery]:
    """``EVENTS`` ``invoice.paid`` events, each paying a fresh invoice of one subscription."""
    deliveries = []
    for n in range(EVENTS):
        sub, customer = subscriptions[n % len(subscriptions)]
        invoice_id = plain_id("in", n)
        event = se.event("invoice.paid", se.invoice(
            invoice_id=invoice_id, customer=customer, subscription_id=sub, price=PRICE,
            amount=AMOUNT, paid=True, payment_intent=plain_id("pi", n)),
            event_id=plain_id("evt", n))
        deliveries.append(Delivery(event["id"], invoice_id, se.encode(event)))
    return deliveries


@contextlib.asynccontextmanager
async def billwatch_serving(database_url: str, workdir: Path) -> AsyncIterator[
        tuple[str, asyncio.subprocess.Process]]:
    """``billwatch serve --workers 2`` on the database; yields its webhook URL and process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    env.update(APP_ENV, BILLWATCH_DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    exe = Path(sys.executable).parent / "billwatch"
    with (workdir / "serve.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(exe), "serve", "--workers", "2", "--no-migrate", "--port", str(port),
            cwd=workdir, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        try:
            await _until_healthy(f"http://127.0.0.1:{port}/healthz", process, workdir)
            yield f"http://127.0.0.1:{port}/webhooks/stripe", process
        finally:
            await stop_process(process)


def worker_pids(parent: int) -> set[int]:
    """The server's worker processes: its children started by ``multiprocessing.spawn``."""
    children = {int(pid) for task in Path(f"/proc/{parent}/task").iterdir()
                for pid in (task / "children").read_text().split()}
    return {pid for pid in children
            if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()}


async def _until_healthy(url: str, process: asyncio.subprocess.Process, workdir: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            assert process.returncode is None, (workdir / "serve.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            assert time.monotonic() < deadline, "billwatch did not answer /healthz in 60 s"
            await asyncio.sleep(0.1)


async def unfinished_and_total(db: Database) -> tuple[int, int]:
    async with db.sessionmaker() as session:
        unfinished = await session.scalar(select(func.count()).select_from(StripeEvent)
                                          .where(StripeEvent.status.in_(UNFINISHED)))
        total = await session.scalar(select(func.count()).select_from(StripeEvent))
    return int(unfinished or 0), int(total or 0)


async def stored_ids(db: Database, ids: list[str]) -> set[str]:
    async with db.sessionmaker() as session:
        return set((await session.scalars(select(StripeEvent.stripe_event_id)
                                          .where(StripeEvent.stripe_event_id.in_(ids)))).all())


async def until_drained(db: Database, process: asyncio.subprocess.Process, workdir: Path) -> None:
    """Wait until the app's own processors have finished every event (no help from the test)."""
    deadline = time.monotonic() + DRAIN_DEADLINE
    while True:
        assert process.returncode is None, (workdir / "serve.log").read_text()
        unfinished, total = await unfinished_and_total(db)
        if unfinished == 0 and total == EVENTS:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {DRAIN_DEADLINE}s, {unfinished} of {total} stored events "
                                 "are still unprocessed")
        await asyncio.sleep(0.2)


@dataclass
class Restart:
    """What the load looked like when the server went down and came back."""

    acked_before: int = 0
    processed_before: int = 0
    down_for: float = 0.0


async def restart_during_load(server: PgServer, stripe: StripeLike, url: str) -> Restart:
    """Once ``RESTART_AFTER`` deliveries are acknowledged: stop the server, wait, start it."""
    await stripe.restart_due.wait()
    restart = Restart(stripe.acked)
    checks = Database(url)
    try:
        unfinished, total = await unfinished_and_total(checks)
        restart.processed_before = total - unfinished
    finally:
        await checks.dispose()
    stopped = time.monotonic()
    await asyncio.to_thread(server.stop, "fast")  # every session is ended, as a restart does
    await asyncio.sleep(DOWN_SECONDS)
    await asyncio.to_thread(server.start)
    restart.down_for = time.monotonic() - stopped
    stripe.restarted = True
    return restart


async def load_and_restart(server: PgServer, stripe: StripeLike, url: str) -> Restart:
    """The load and the restart side by side; the first to fail stops the other."""
    sending = asyncio.create_task(stripe.run(SENDERS))
    restarting = asyncio.create_task(restart_during_load(server, stripe, url))
    try:
        await asyncio.wait([sending, restarting], return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in (sending, restarting):
            task.cancel()
    for task in (sending, restarting):
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            raise error
    return restarting.result()


@pytest.fixture
def pg_server(backend: str) -> Iterator[PgServer]:
    if backend != "postgresql":
        pytest.skip("SQLite has no server to restart")
    with private_server() as server:
        yield server


async def test_every_delivery_is_applied_exactly_once_across_a_database_restart(
        pg_server: PgServer, tmp_path: Path) -> None:
    url = await pg_server.create_database("billwatch")
    await migrate(url)
    db = Database(url)
    try:
        deliveries = invoice_deliveries(await seed_subscriptions(db))
    finally:
        await db.dispose()
    async with billwatch_serving(url, tmp_path) as (webhook_url, process):
        workers = worker_pids(process.pid)
        assert len(workers) == 2, workers
        started = time.monotonic()
        stripe = StripeLike(webhook_url, deliveries)
        restart = await load_and_restart(pg_server, stripe, url)
        loaded = time.monotonic() - started
        db = Database(url)
        try:
            # a 2xx means stored: every event is there as soon as the last one is acknowledged
            acked = [d.event_id for d in deliveries]
            missing = set(acked) - await stored_ids(db, acked)
            assert not missing, f"{len(missing)} events acknowledged but not stored"

            await until_drained(db, process, tmp_path)
            drained_at = time.monotonic() - started
            # the same app processes recovered by themselves: none died and was replaced
            assert process.returncode is None and worker_pids(process.pid) == workers
            rows = await effect_rows(db)
        finally:
            await db.dispose()

    answers = Counter(a for d in deliveries for a in d.answers)
    resent = [d for d in deliveries if len(d.answers) > 1]
    print(f"\n{EVENTS} events, {sum(len(d.answers) for d in deliveries)} deliveries "
          f"({dict(answers)}), {len(resent)} events re-sent; server down {restart.down_for:.1f}s "
          f"after {restart.acked_before} acks ({restart.processed_before} processed); "
          f"all acked at {loaded:.1f}s, drained at {drained_at:.1f}s; attempts {rows.attempts}")

    # the load straddled the restart: refused deliveries before, acknowledged ones after
    assert resent, "no delivery went unanswered: the restart missed the load"
    assert any(d.acked_after_restart for d in deliveries)
    # Stripe-style: each event got exactly one 2xx, and a "duplicate" only after an unanswered
    # attempt whose commit had in fact landed
    for delivery in deliveries:
        assert [a for a in delivery.answers if a.startswith("2")] == [f"200 {delivery.acked}"]
        assert delivery.acked == "received" or len(delivery.answers) > 1, delivery.answers

    event_ids = {d.event_id for d in deliveries}
    assert rows.statuses == {d.event_id: "processed" for d in deliveries}
    assert rows.payments == {d.invoice_id: 1 for d in deliveries}
    assert rows.received == dict.fromkeys(event_ids, 1)
    assert rows.payment_audits == dict.fromkeys(event_ids, 1)
    assert rows.processed_attempts == dict.fromkeys(event_ids, 1)
    assert rows.failures == 0


@dataclass
class EffectRows:
    statuses: dict[str, str]
    payments: dict[str, int]
    """Payment transactions per Stripe invoice."""
    received: dict[str, int]
    """``billing.webhook.received`` rows per event: one per handled attempt that committed."""
    payment_audits: dict[str, int]
    processed_attempts: dict[str, int]
    attempts: dict[str, int]
    """Every attempt row by outcome (``abandoned`` and ``failed`` ones are the outage's)."""
    failures: int


async def effect_rows(db: Database) -> EffectRows:
    """What the events made, counted per event (not read off their statuses)."""
    async with db.sessionmaker() as session:
        statuses = {e: s.value for e, s in (await session.execute(
            select(StripeEvent.stripe_event_id, StripeEvent.status))).all()}
        payments = dict((await session.execute(
            select(Transaction.stripe_invoice_id, func.count())
            .where(Transaction.kind == TransactionKind.PAYMENT)
            .group_by(Transaction.stripe_invoice_id))).all())
        by_type: dict[str, dict[str, int]] = {}
        for event_type, event_id, n in (await session.execute(
                select(AuditLog.event_type, AuditLog.stripe_event_id, func.count())
                .where(AuditLog.event_type.in_(["billing.webhook.received",
                                                "billing.payment.succeeded",
                                                "billing.webhook.failed"]))
                .group_by(AuditLog.event_type, AuditLog.stripe_event_id))).all():
            by_type.setdefault(str(event_type), {})[str(event_id)] = int(n)
        processed = dict((await session.execute(
            select(StripeEvent.stripe_event_id, func.count())
            .join(StripeEventAttempt, StripeEventAttempt.event_id == StripeEvent.id)
            .where(StripeEventAttempt.outcome == AttemptOutcome.PROCESSED)
            .group_by(StripeEvent.stripe_event_id))).all())
        attempts = {o.value: n for o, n in (await session.execute(
            select(StripeEventAttempt.outcome, func.count())
            .group_by(StripeEventAttempt.outcome))).all()}
    return EffectRows(statuses, _counts(payments), by_type.get("billing.webhook.received", {}),
                      by_type.get("billing.payment.succeeded", {}), _counts(processed), attempts,
                      sum(by_type.get("billing.webhook.failed", {}).values()))


def _counts(rows: dict[Any, Any]) -> dict[str, int]:
    return {str(key): int(value) for key, value in rows.items()}
