"""Fail closed: no audit row, no operation — and the failure is counted and handed to alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from billwatch.accounts.actor import SystemActor
from billwatch.accounts.models import Role
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import AuditWriteFailure
from billwatch.billing.models import Transaction, TransactionKind
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.runtime import Runtime
from tests.audit.conftest import audit_rows_refused
from tests.support import Factory, People, audit_rows, keyed, paid_subscription


def failures(runtime: Runtime) -> float:
    """The test's own runtime's count: it starts at zero."""
    return runtime.metrics.registry.get_sample_value("audit_write_failures_total") or 0.0


def committed(runtime: Runtime, outcome: str) -> float:
    return runtime.metrics.registry.get_sample_value("billing_audit_writes_total",
                                                     {"outcome": outcome}) or 0.0


@pytest.fixture
async def audit_table_refuses_rows(db: Database) -> AsyncIterator[None]:
    """The database stops accepting audit rows (a full volume, a revoked grant)."""
    async with audit_rows_refused(db):
        yield


@pytest.fixture
def failure_hook() -> list[AuditWriteFailure]:
    return []


@pytest.fixture
def runtime(settings: Settings, failure_hook: list[AuditWriteFailure]) -> Runtime:
    """The test's runtime, with one more write-failure hook: it keeps what it is told."""
    built = build_runtime(settings)
    return replace(built, write_failure_hooks=(
        *built.write_failure_hooks, lambda _runtime, failure: failure_hook.append(failure)))


@pytest.fixture
async def people(factory: Factory) -> People:
    return People(admin=await factory.user(Role.ADMIN), patient=await factory.user(Role.PATIENT),
                  proxy=await factory.user(Role.PROXY))


@pytest.fixture
async def payment(db: Database, settings: Settings, people: People) -> Transaction:
    return (await paid_subscription(db, settings, people.owner))[1]


class TestNoRowNoRefund:
    async def test_the_refund_fails_and_nothing_is_written(
            self, app: FastAPI, db: Database, factory: Factory, people: People,
            payment: Transaction, failure_hook: list[AuditWriteFailure],
            audit_table_refuses_rows: None, runtime: Runtime) -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                         headers=keyed(factory.headers(people.admin)),
                                         json={"amount_cents": 500, "reason": "service_issue"})
        assert response.status_code == 500
        async with db.sessionmaker() as session:
            refreshed = await session.get(Transaction, payment.id)
            assert refreshed is not None and refreshed.refunded_cents == 0
            kinds = (await session.scalars(select(Transaction.kind))).all()
        assert TransactionKind.REFUND not in kinds
        assert await audit_rows(db) == []
        assert failures(runtime) >= 1
        assert any("billing.refund.issued" in f.event_types and f.stage == "insert"
                   for f in failure_hook)


class TestCounting:
    async def test_committed_rows_count_and_rolled_back_rows_do_not(
            self, db: Database, runtime: Runtime) -> None:
        async with db.unit_of_work() as session:
            recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"))
        assert committed(runtime, "success") == 1
        with pytest.raises(RuntimeError):
            async with db.unit_of_work() as session:
                recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"))
                raise RuntimeError("business rule failed")
        assert committed(runtime, "success") == 1
        assert len(await audit_rows(db)) == 1
