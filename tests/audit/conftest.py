"""Fixtures for the audit trail: keys, a checkpoint store, rows written through the recorder."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.accounts.models import OwnerType, Role
from billwatch.audit import crypto, recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin
from billwatch.db import Database
from billwatch.runtime import Runtime
from tests.audit.tampering import protect


@pytest.fixture
def keys() -> crypto.AuditKeys:
    """Non-development keys for this test (its database's runtime seals with them)."""
    return crypto.keys_from(crypto.generate_key_entry("k1"),
                            "test-audit-hmac-key-0123456789abcdef-xyz")


@pytest.fixture
def runtime(settings: Settings, request: pytest.FixtureRequest) -> Runtime:
    """A test that asks for ``keys`` gets a database whose runtime seals with them."""
    if "keys" in request.fixturenames:
        return build_runtime(settings, keys=request.getfixturevalue("keys"))
    return build_runtime(settings)


REFUSE_PG = """
CREATE OR REPLACE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit volume full (simulated)'; END $$
"""


@asynccontextmanager
async def audit_rows_refused(db: Database) -> AsyncIterator[None]:
    """While inside, the database refuses every audit row (a full volume, a revoked grant)."""
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text(REFUSE_PG))
            await conn.execute(text("CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_logs "
                                    "FOR EACH ROW EXECUTE FUNCTION test_refuse_audit()"))
        else:
            await conn.execute(text("CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_logs "
                                    "BEGIN SELECT RAISE(ABORT, 'audit volume full (simulated)'); END"))
    try:
        yield
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_audit"
                                    + (" ON audit_logs" if db.dialect == "postgresql" else "")))


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoints")


async def write_rows(db: Database, count: int, *, per_transaction: int = 50) -> list[uuid.UUID]:
    """``count`` varied rows, recorded the way services record them."""
    ids: list[uuid.UUID] = []
    admin = Actor(uuid.uuid4(), Role.ADMIN)
    proxy = Actor(uuid.uuid4(), Role.PROXY, via_assignment_id=uuid.uuid4())
    owner = OwnerRef(OwnerType.PATIENT, uuid.uuid4())
    written = 0
    while written < count:
        with bound_origin(Origin(request_id=uuid.uuid4().hex, client_ip="198.51.100.4")):
            async with db.unit_of_work() as session:
                for _ in range(min(per_transaction, count - written)):
                    kind = written % 3
                    row = recorder.record(
                        session,
                        (AuditEvent.REFUND_ISSUED, AuditEvent.PROXY_CHECKOUT_CREATED,
                         AuditEvent.PAYMENT_FAILED)[kind],
                        actor=(admin, proxy, SystemActor("stripe"))[kind],
                        outcome=Outcome.FAILURE if kind == 2 else Outcome.SUCCESS,
                        owner=owner, resource=Resource("transaction", uuid.uuid4()),
                        stripe=StripeRefs(event_id=f"evt_{written}", customer_id="cus_A1"),
                        idempotency_key=f"op:{written}",
                        reason="card_declined" if kind == 2 else None,
                        data={"amount_cents": 1500 + written, "currency": "usd", "n": written,
                              "note": "ünïcode ✓"})
                    ids.append(row.id)
                    written += 1
    return ids


async def write_rows_at(db: Database, count: int, when: datetime) -> list[uuid.UUID]:
    """Rows that happened at ``when`` (as if written then), signed like any other."""
    keys = db.required_runtime().keys
    ids: list[uuid.UUID] = []
    async with db.unit_of_work() as session:
        for index in range(count):
            row = recorder._build(AuditEvent.PAYMENT_SUCCEEDED, keys, actor=SystemActor("stripe"),
                                  outcome=Outcome.SUCCESS, owner=None, resource=None,
                                  stripe=StripeRefs(invoice_id=f"in_{index}"),
                                  idempotency_key=None, reason=None,
                                  data={"amount_cents": 1500, "n": index})
            row.occurred_at = when + timedelta(seconds=index)
            protect(row, row.data, keys)
            session.add(row)
            ids.append(row.id)
    return ids
