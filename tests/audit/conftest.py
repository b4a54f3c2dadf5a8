"""Fixtures for the audit trail: keys, a checkpoint store, rows written through the recorder."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.accounts.models import OwnerType, Role
from billwatch.audit import crypto, recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.context import Origin, bound_origin
from billwatch.db import Database
from tests.audit.tampering import protect


@pytest.fixture
def keys() -> Iterator[crypto.AuditKeys]:
    """Non-development keys for this test, restored afterwards."""
    before = crypto.current()
    installed = crypto.install(crypto.keys_from(
        crypto.generate_key_entry("k1"), "test-audit-hmac-key-0123456789abcdef-xyz"))
    yield installed
    crypto.install(before)


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
    keys = crypto.current()
    ids: list[uuid.UUID] = []
    async with db.unit_of_work() as session:
        for index in range(count):
            row = recorder._build(AuditEvent.PAYMENT_SUCCEEDED, actor=SystemActor("stripe"),
                                  outcome=Outcome.SUCCESS, owner=None, resource=None,
                                  stripe=StripeRefs(invoice_id=f"in_{index}"),
                                  idempotency_key=None, reason=None,
                                  data={"amount_cents": 1500, "n": index})
            row.occurred_at = when + timedelta(seconds=index)
            protect(row, row.data, keys)
            session.add(row)
            ids.append(row.id)
    return ids
