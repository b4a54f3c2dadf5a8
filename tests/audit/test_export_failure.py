"""An export whose query fails midway records a failure row, and the stream is cut visibly.

The database is made to fail the way a real one can mid-result: one stored row holds a time the
driver cannot read (100 BC on PostgreSQL, year 0 on SQLite), and it sorts oldest, so it falls
in the second batch the export reads: the first batch is streamed, then the read raises.
Served by a real uvicorn so the cut is what a client would see: a chunked body that never
ends, not a short but complete file.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from billwatch.accounts.models import Role
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.audit.service import EXPORT_BATCH
from billwatch.db import Database
from tests.audit.conftest import write_rows
from tests.inputs.helpers import served
from tests.support import Factory, audit_rows

UNREADABLE_TIME = {"postgresql": "CAST('0100-01-01 00:00:00+00 BC' AS TIMESTAMPTZ)",
                   "sqlite": "'0000-01-01 00:00:00.000000'"}


async def store_unreadable_copy(db: Database, backend: str, source: uuid.UUID) -> None:
    """A copy of ``source`` whose ``occurred_at`` the driver cannot turn into a datetime."""
    columns = [c.name for c in AuditLog.__table__.columns if c.name not in ("id", "occurred_at")]
    names = ", ".join(columns)
    new_id = uuid.uuid4().hex if backend == "sqlite" else str(uuid.uuid4())
    source_id = source.hex if backend == "sqlite" else str(source)
    async with db.engine.begin() as conn:
        await conn.execute(text(
            f"INSERT INTO audit_logs (id, occurred_at, {names}) "
            f"SELECT :new_id, {UNREADABLE_TIME[backend]}, {names} FROM audit_logs "
            "WHERE id = :source"), {"new_id": new_id, "source": source_id})


class TestExportFailsMidway:
    @pytest.mark.parametrize("export_format", ["jsonl", "csv"])
    async def test_failure_row_and_an_unfinished_stream(
            self, export_format: str, app: FastAPI, db: Database, factory: Factory,
            backend: str) -> None:
        written = await write_rows(db, EXPORT_BATCH + 10, per_transaction=255)
        await store_unreadable_copy(db, backend, written[0])
        admin = await factory.user(Role.ADMIN)
        received = b""
        async with (served(app) as base,
                    httpx.AsyncClient(base_url=base, timeout=20) as http,
                    http.stream("GET", "/admin/audit-logs/export",
                                params={"format": export_format},
                                headers=factory.headers(admin)) as response):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in response.aiter_bytes():
                    received += chunk
        if export_format == "jsonl":
            assert len(received.splitlines()) == EXPORT_BATCH  # the first batch, then the cut
        reads = await audit_rows(db, event_type=AuditEvent.AUDIT_READ.value)
        assert [(r.outcome, r.actor_user_id) for r in reads] == [
            (Outcome.SUCCESS, admin.id), (Outcome.FAILURE, admin.id)]
        failure = reads[1]
        assert failure.reason is not None and failure.reason.startswith("export_failed: ")
        assert failure.data["status_code"] == 500
        assert failure.data["route"] == "/admin/audit-logs/export"

    async def test_a_complete_export_writes_no_failure_row(
            self, client: httpx.AsyncClient, db: Database, factory: Factory) -> None:
        await write_rows(db, 5)
        admin = await factory.user(Role.ADMIN)
        response = await client.get("/admin/audit-logs/export", headers=factory.headers(admin))
        assert response.status_code == 200
        assert len(response.text.splitlines()) == 5 + 1  # with the export's own audit.read row
        reads = await audit_rows(db, event_type=AuditEvent.AUDIT_READ.value)
        assert [r.outcome for r in reads] == [Outcome.SUCCESS]
