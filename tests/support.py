"""Shared test helpers: real databases, a real Stripe peer process, factories."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import func, select, text

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import Organization, OwnerType, Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditLog
from billwatch.billing.models import (
    StripeCustomer,
    Subscription,
    SubscriptionStatus,
    Transaction,
    TransactionKind,
    TransactionStatus,
)
from billwatch.config import Settings
from billwatch.db import Base, Database
from billwatch.migrations import upgrade
from billwatch.payments.gateway import PaymentsGateway

T = TypeVar("T")

PG_ADMIN_DSN = os.environ.get("BILLWATCH_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
SHARED_STRIPE_FIXTURES = REPO.parent / "shared" / "stripe" / "fixtures3.json"
TEST_TOKEN_SECRET = "billwatch-test-token-secret-0123456789abcdef"
TEST_WEBHOOK_SECRET = "whsec_billwatch_test_secret_0123456789"


def worker_id() -> str:
    """This test process's name under pytest-xdist (``gw0``, ``gw1``...), ``main`` without it."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _worker_ports() -> range | None:
    """This worker's own slice of the ports below the kernel's ephemeral range.

    A port handed out here is never handed to another worker, nor taken by an outgoing
    connection, so a port a test expects to be closed stays closed while the test runs.
    """
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    floor, ceiling = 20_000, min(ephemeral_low, 32_000)
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    name = worker_id()
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    span = (ceiling - floor) // workers
    if span < 500:
        return None
    return range(floor + index * span, floor + (index + 1) * span)


_PORTS = _worker_ports()
_next_port = [0 if _PORTS is None else random.randrange(len(_PORTS))]


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (a server stops its own workers), then SIGKILL after 30 s: the process's own
    group when it leads one (started with ``start_new_session``), else the process alone."""
    if process.returncode is None:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        await asyncio.wait_for(process.wait(), timeout=10)


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's slice, each handed out once in turn."""
    if _PORTS is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    for _ in range(len(_PORTS)):
        candidate = _PORTS[_next_port[0] % len(_PORTS)]
        _next_port[0] += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue  # something else (another run, a service) holds it
            return candidate
    raise RuntimeError(f"no free port left in {_PORTS}")


def wait_for_port(port: int, *, timeout: float = 20.0, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class LocalStripe:
    """localstripe run as a separate process (it is GPL: never imported) in its own folder."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        exe = shutil.which("localstripe") or str(Path(sys.executable).parent / "localstripe")
        self.log = open(workdir / "localstripe.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen([exe, "--port", str(self.port), "--from-scratch"],
                                        cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def create_pg_database(template: str | None = None) -> tuple[str, str]:
    """A fresh PostgreSQL database for this run; returns (name, async SQLAlchemy URL).

    With ``template``, a copy of that (migrated) database: 80 ms, where migrating an empty one
    takes 0.7 s or more. Commits in a test database do not wait for the WAL to reach the disk
    (``synchronous_commit`` off): the server is never crashed under a test, and a commit then
    costs 0.1 to 0.3 ms instead of 1 to 3 (40 at the 90th percentile on a loaded machine).
    """
    name = f"billwatch_test_{worker_id()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def drop_pg_database(name: str) -> None:
    """Drop a test database without the test waiting for it.

    ``DROP DATABASE`` waits for an immediate checkpoint; on a loaded machine one checkpoint took
    193 s (70,000 files to fsync after many migrated databases), past a test's timeout, though
    nothing was wrong with the test. The drop (``WITH (FORCE)`` ends its connections) runs in a
    detached ``psql`` that outlives the test run if need be.
    """
    psql = shutil.which("psql")
    if psql is None:  # no client installed: drop it here, waiting as before
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        return
    _detached(psql, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _detached(psql: str, *args: str) -> None:
    """Start ``psql`` in a session of its own and return at once (only the fork is waited for)."""
    subprocess.Popen([psql, PG_ADMIN_DSN, *args], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def migrate(url: str) -> None:
    await asyncio.to_thread(upgrade, url)


async def reset_database(db: Database) -> None:
    """Empty every table between tests (PostgreSQL); SQLite tests get a fresh file instead.

    A test leaves rows in a few tables, so one query finds them and a ``DELETE`` empties each,
    children first. ``TRUNCATE`` of all 28 tables (and every audit partition) gives each a new
    file and cost 145 to 400 ms a test on a loaded machine; these deletes cost 4 to 20 ms.
    """
    names = [table.name for table in Base.metadata.sorted_tables]
    probe = " UNION ALL ".join(f"SELECT '{name}' WHERE EXISTS (SELECT 1 FROM \"{name}\")"
                               for name in names)
    async with db.engine.begin() as conn:
        filled = set((await conn.scalars(text(probe))).all())
        if not filled:
            return
        async with maintenance(conn, "test-reset"):
            for name in reversed(names):  # sorted_tables puts parents first
                if name in filled:
                    await conn.execute(text(f'DELETE FROM "{name}"'))


def test_settings(database_url: str, stripe_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",  # tests run on the development audit keys
        "enable_api_docs": True,  # tests read /openapi.json
        "database_url": database_url,
        "stripe_api_base": stripe_url,
        "stripe_api_key": "sk_test_billwatch_tests",
        "stripe_webhook_secret": TEST_WEBHOOK_SECRET,
        "token_secret": TEST_TOKEN_SECRET,
        "public_base_url": "http://127.0.0.1:8000",
        "log_json": True,
        "log_level": "WARNING",
        "embedded_scheduler": False,  # a served app runs no daily/hourly job unless a test asks
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Factory:
    """Creates users and organizations in committed transactions, and mints their tokens."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def user(self, role: Role, name: str | None = None) -> User:
        async with self.db.unit_of_work() as session:
            tag = uuid.uuid4().hex[:8]
            return await accounts.create_user(session, email=f"{role.value}-{tag}@example.test",
                                              name=name or f"{role.value.title()} {tag}", role=role)

    async def organization(self, *, billing_admins: Sequence[User] = (),
                           members: Sequence[User] = ()) -> Organization:
        async with self.db.unit_of_work() as session:
            return await accounts.create_organization(
                session, name=f"Clinic {uuid.uuid4().hex[:6]}",
                billing_admins=list(billing_admins), members=list(members))

    def headers(self, user: User) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(user, self.settings)}"}


def keyed(headers: dict[str, str], key: str | None = None) -> dict[str, str]:
    """``headers`` plus an ``Idempotency-Key`` (fresh unless given), as money-moving POSTs need."""
    return {**headers, "Idempotency-Key": key or str(uuid.uuid4())}


async def audit_rows(db: Database, **filters: Any) -> list[AuditLog]:
    async with db.sessionmaker() as session:
        query = select(AuditLog).order_by(AuditLog.occurred_at)
        for name, value in filters.items():
            query = query.where(getattr(AuditLog, name) == value)
        return list((await session.scalars(query)).all())


async def count(db: Database, model: type[Any]) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def reload(db: Database, model: type[T], row_id: uuid.UUID | str) -> T:
    """The committed state of one row, read in a session of its own."""
    async with db.sessionmaker() as session:
        found = await session.get(model, uuid.UUID(str(row_id)))
        assert found is not None, f"{model.__name__} {row_id} not found"
        return found


async def snapshot(db: Database) -> dict[str, list[str]]:
    """Every business row (everything but the audit trail), to compare before and after."""
    async with db.sessionmaker() as session:
        result: dict[str, list[str]] = {}
        for table in Base.metadata.sorted_tables:
            if table.name.startswith("audit_"):
                continue
            rows = (await session.execute(select(table))).all()
            result[table.name] = sorted(repr(tuple(row)) for row in rows)
        return result


async def paid_subscription(db: Database, settings: Settings, owner: OwnerRef, *,
                            plan_code: str = "basic_monthly",
                            card: str = "4242424242424242") -> tuple[Subscription, Transaction]:
    """A subscription really created and paid at the Stripe peer, recorded as the webhooks would."""
    plan = settings.plan(plan_code)
    assert plan is not None
    stripe_client = PaymentsGateway(settings).client
    customer = await stripe_client.v1.customers.create_async(params={"name": "Test owner"})
    method = await stripe_client.v1.payment_methods.create_async(params={
        "type": "card", "card": {"number": card, "exp_month": 12, "exp_year": 2040, "cvc": "123"}})
    await stripe_client.v1.payment_methods.attach_async(method.id, params={"customer": customer.id})
    await stripe_client.v1.customers.update_async(
        customer.id, params={"invoice_settings": {"default_payment_method": method.id}})
    stripe_sub = (await stripe_client.v1.subscriptions.create_async(params={
        "customer": customer.id, "items": [{"plan": plan.stripe_price}]})).to_dict()
    invoice = (await stripe_client.v1.invoices.retrieve_async(stripe_sub["latest_invoice"])).to_dict()
    charge = invoice.get("charge")
    charge_id = charge["id"] if isinstance(charge, dict) else charge
    async with db.unit_of_work() as session:
        session.add(StripeCustomer(id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
                                   stripe_customer_id=customer.id, idempotency_key=f"test:{customer.id}"))
        subscription = Subscription(
            id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, plan_code=plan.code,
            status=SubscriptionStatus.ACTIVE, stripe_subscription_id=stripe_sub["id"],
            stripe_customer_id=customer.id,
            current_period_start=datetime.fromtimestamp(stripe_sub["current_period_start"], UTC),
            current_period_end=datetime.fromtimestamp(stripe_sub["current_period_end"], UTC))
        session.add(subscription)
        await session.flush()
        payment = Transaction(
            id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
            subscription_id=subscription.id, kind=TransactionKind.PAYMENT,
            status=TransactionStatus.SUCCEEDED, amount_cents=plan.amount_cents,
            currency=plan.currency, plan_code=plan.code, stripe_invoice_id=invoice["id"],
            stripe_charge_id=charge_id, stripe_payment_intent_id=invoice.get("payment_intent"))
        session.add(payment)
    return subscription, payment


@dataclass
class People:
    """The usual cast of a billing test: an admin, a patient (the owner) and a proxy."""

    admin: User
    patient: User
    proxy: User

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef(OwnerType.PATIENT, self.patient.id)

    @property
    def owner_body(self) -> dict[str, str]:
        return {"owner_type": "patient", "owner_id": str(self.patient.id)}


class HangingStripe:
    """A TCP peer that accepts Stripe calls and never answers them."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _hold(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.accepted.set()

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
