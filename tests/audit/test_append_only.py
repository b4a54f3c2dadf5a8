"""The audit tables refuse UPDATE, DELETE and TRUNCATE except through the one maintenance path."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditCheckpoint, AuditLog, AuditSeal
from billwatch.audit.sealing import seal
from billwatch.db import Database
from tests.audit.conftest import write_rows


@pytest.fixture
async def sealed(db: Database, keys: AuditKeys, store: CheckpointStore) -> list[uuid.UUID]:
    ids = await write_rows(db, 5)
    await seal(db, keys=keys, store=store)
    return ids


async def count(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditLog)) or 0)


class TestRefusedWithoutMaintenance:
    @pytest.mark.parametrize("statement", [
        update(AuditLog).values(reason="edited"),
        update(AuditLog).values(metadata_key_id="k1"),
        delete(AuditLog),
        update(AuditSeal).values(chain_hash=b"\0" * 32),
        delete(AuditSeal),
        update(AuditCheckpoint).values(last_seq=0),
        delete(AuditCheckpoint),
    ], ids=["update-log", "update-log-key", "delete-log", "update-seal", "delete-seal",
            "update-checkpoint", "delete-checkpoint"])
    async def test_statement_is_refused(self, sealed: list[uuid.UUID], db: Database,
                                        statement: object) -> None:
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.unit_of_work() as session:
                await session.execute(statement)  # type: ignore[call-overload]
        assert await count(db) == 5

    async def test_truncate_is_refused_on_postgresql(self, sealed: list[uuid.UUID], db: Database,
                                                     backend: str) -> None:
        if backend != "postgresql":
            pytest.skip("SQLite has no TRUNCATE")
        for table in ("audit_logs", "audit_seals", "audit_checkpoints", "audit_archives"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with db.engine.begin() as conn:
                    await conn.execute(text(f"TRUNCATE {table}"))
        assert await count(db) == 5

    async def test_a_setting_from_an_earlier_transaction_does_not_linger(
            self, sealed: list[uuid.UUID], db: Database) -> None:
        async with db.engine.connect() as conn:
            async with conn.begin(), maintenance(conn, "test"):
                pass
            with pytest.raises(DBAPIError, match="append-only"):
                async with conn.begin():
                    await conn.execute(delete(AuditLog))
        assert await count(db) == 5


class TestMaintenancePath:
    async def test_rows_can_be_deleted_through_it(self, sealed: list[uuid.UUID],
                                                  db: Database) -> None:
        async with db.unit_of_work() as session, maintenance(session, "archive"):
            await session.execute(delete(AuditLog).where(AuditLog.id == sealed[0]))
        assert await count(db) == 4

    async def test_only_the_ciphertext_may_change_through_it(self, sealed: list[uuid.UUID],
                                                              db: Database) -> None:
        async with db.unit_of_work() as session, maintenance(session, "rotate-key"):
            await session.execute(update(AuditLog).where(AuditLog.id == sealed[0])
                                  .values(metadata_key_id="k9"))
        for change in ({"reason": "edited"}, {"content_hash": b"\0" * 32},
                       {"occurred_at": func.now()} if db.dialect == "postgresql" else
                       {"event_type": "billing.other"}):
            with pytest.raises(DBAPIError):
                async with db.unit_of_work() as session, maintenance(session, "rotate-key"):
                    await session.execute(update(AuditLog).values(**change))

    async def test_seals_are_never_updated(self, sealed: list[uuid.UUID], db: Database) -> None:
        with pytest.raises(DBAPIError):
            async with db.unit_of_work() as session, maintenance(session, "archive"):
                await session.execute(update(AuditSeal).values(seq=AuditSeal.seq + 100))
