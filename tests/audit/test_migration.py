"""The audit migrations: rows written before each are kept, protected and verifiable after."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from billwatch.accounts.actor import SystemActor
from billwatch.audit import recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditLog
from billwatch.audit.partitions import Month
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.db import Database, utcnow
from billwatch.migrations import alembic_config, upgrade
from billwatch.runtime import Runtime
from tests.audit.conftest import write_rows, write_rows_at

ROW_ID = uuid.uuid4()
FOUNDATION_ROW = (
    "INSERT INTO audit_logs (id, occurred_at, event_type, outcome, action, reason, actor_name, "
    "resource_type, resource_id, metadata) VALUES ({id}, {at}, 'billing.refund.issued', 'success', "
    "'issued', NULL, 'cli', 'transaction', 'tx-1', {metadata})")



async def foundation_with_a_plaintext_row(url: str, runtime: Runtime) -> Database:
    await asyncio.to_thread(upgrade, url, "0001_foundation")
    db = Database(url, runtime=runtime)
    row_id = ROW_ID.hex if db.dialect == "sqlite" else str(ROW_ID)
    casts = ({"id": "CAST(:id AS uuid)", "at": "CAST(:at AS timestamptz)",
              "metadata": "CAST(:metadata AS jsonb)"} if db.dialect == "postgresql"
             else {"id": ":id", "at": ":at", "metadata": ":metadata"})
    async with db.engine.begin() as conn:
        await conn.execute(text(FOUNDATION_ROW.format(**casts)), {
            "id": row_id, "at": ("2026-11-01 10:00:00.000000" if db.dialect == "sqlite"
                                 else datetime(2026, 11, 1, 10, tzinfo=UTC)),
            "metadata": json.dumps({"amount_cents": 700, "note": "before the audit branch"})})
    return db


class TestMigration:
    async def test_existing_rows_are_encrypted_and_verify(
            self, fresh_url: str, keys: AuditKeys, runtime: Runtime, tmp_path: Path) -> None:
        db = await foundation_with_a_plaintext_row(fresh_url, runtime)
        try:
            await asyncio.to_thread(upgrade, fresh_url, audit_keys=keys)
            async with db.engine.connect() as conn:
                raw = (await conn.execute(text("SELECT * FROM audit_logs"))).mappings().one()
            assert "metadata" not in raw and b"before the audit" not in bytes(raw["metadata_ciphertext"])
            async with db.sessionmaker() as session:
                row = await session.get(AuditLog, ROW_ID)
                assert row is not None and row.data["note"] == "before the audit branch"
            store = CheckpointStore(tmp_path / "checkpoints")
            assert (await seal(db, keys=keys, store=store)).sealed == 1
            report = await verify(db, keys=keys, store=store)
            assert report.ok, report.problem
        finally:
            await db.dispose()

    async def test_downgrade_restores_plaintext_metadata(self, fresh_url: str,
                                                         keys: AuditKeys, runtime: Runtime) -> None:
        db = await foundation_with_a_plaintext_row(fresh_url, runtime)
        try:
            await asyncio.to_thread(upgrade, fresh_url, audit_keys=keys)
            await asyncio.to_thread(command.downgrade, alembic_config(fresh_url, audit_keys=keys),
                                    "0200_audit-1")
            async with db.engine.connect() as conn:
                metadata = (await conn.execute(text("SELECT metadata FROM audit_logs"))).scalar_one()
            loaded = json.loads(metadata) if isinstance(metadata, str) else metadata
            assert loaded == {"amount_cents": 700, "note": "before the audit branch"}
        finally:
            await db.dispose()


class TestIntegrityMigration:
    async def test_0210_keeps_the_triggers_and_downgrades_cleanly(
            self, fresh_url: str, keys: AuditKeys, runtime: Runtime, tmp_path: Path) -> None:
        await asyncio.to_thread(upgrade, fresh_url, audit_keys=keys)
        await asyncio.to_thread(command.downgrade, alembic_config(fresh_url, audit_keys=keys), "0200_audit")
        await asyncio.to_thread(upgrade, fresh_url, audit_keys=keys)
        db = Database(fresh_url, runtime=runtime)
        try:
            async with db.unit_of_work() as session:
                recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"))
            store = CheckpointStore(tmp_path / "checkpoints")
            first = (await seal(db, keys=keys, store=store)).checkpoint
            second = (await seal(db, keys=keys, store=store)).checkpoint
            assert second.prev_hash == first.digest()
            with pytest.raises(DBAPIError, match="append-only"):
                async with db.engine.begin() as conn:
                    await conn.execute(text("DELETE FROM audit_checkpoints"))
            async with db.unit_of_work() as session, maintenance(session, "test"):
                await session.execute(text("DELETE FROM audit_seals"))
            assert (await verify(db, keys=keys, store=store)).problem is not None
        finally:
            await db.dispose()


class TestPartitionMigration:
    """0610 converts a trail that already has rows: same rows, same chain, same grants."""

    async def test_rows_move_into_their_months_and_the_chain_goes_on(
            self, fresh_url: str, keys: AuditKeys, runtime: Runtime, tmp_path: Path) -> None:
        await asyncio.to_thread(upgrade, fresh_url, "0210_audit_integrity", audit_keys=keys)
        db = Database(fresh_url, runtime=runtime)
        this_month = Month.of(utcnow())
        role = f"billwatch_reader_{uuid.uuid4().hex[:10]}"
        try:
            ids = [*await write_rows_at(db, 4, this_month.plus(-9).start + timedelta(days=9)),
                   *await write_rows_at(db, 3, this_month.plus(-3).start + timedelta(days=1)),
                   *await write_rows(db, 2)]
            store = CheckpointStore(tmp_path / "checkpoints")
            before = (await seal(db, keys=keys, store=store)).checkpoint
            if db.dialect == "postgresql":
                async with db.engine.begin() as conn:
                    await conn.execute(text(f"CREATE ROLE {role}"))
                    await conn.execute(text(f"GRANT SELECT, INSERT ON audit_logs TO {role}"))
            await asyncio.to_thread(upgrade, fresh_url, audit_keys=keys)
            async with db.sessionmaker() as session:
                found = set((await session.scalars(select(AuditLog.id))).all())
            assert found == set(ids)
            if db.dialect == "postgresql":
                assert await _placement(db) == {this_month.plus(-9).partition: 4,
                                                this_month.plus(-3).partition: 3,
                                                this_month.partition: 2}
                assert await _privileges(db, role) == (True, True, False)
            report = await verify(db, keys=keys, store=store)
            assert report.ok, report.problem
            assert report.head_seq == before.last_seq == 9
            await write_rows(db, 1)
            after = (await seal(db, keys=keys, store=store)).checkpoint
            assert (after.last_seq, after.prev_hash) == (10, before.digest())
            assert (await verify(db, keys=keys, store=store)).ok

            await asyncio.to_thread(command.downgrade, alembic_config(fresh_url, audit_keys=keys),
                                    "0210_audit_integrity")
            async with db.engine.connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM audit_logs"))).scalar() == 10
                if db.dialect == "postgresql":
                    kind = await conn.execute(text(
                        "SELECT relkind::text FROM pg_class WHERE oid = 'audit_logs'::regclass"))
                    assert kind.scalar() == "r"
            if db.dialect == "postgresql":
                assert await _privileges(db, role) == (True, True, False)
        finally:
            if db.dialect == "postgresql":
                async with db.engine.begin() as conn:
                    await conn.execute(text(f"DROP OWNED BY {role}"))
                    await conn.execute(text(f"DROP ROLE {role}"))
            await db.dispose()


async def _placement(db: Database) -> dict[str, int]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT tableoid::regclass::text, count(*) FROM audit_logs GROUP BY 1"))
        return {str(name): int(count) for name, count in rows.all()}


async def _privileges(db: Database, role: str) -> tuple[bool, bool, bool]:
    async with db.engine.connect() as conn:
        found = await conn.execute(text(
            "SELECT has_table_privilege(:role, 'audit_logs', 'SELECT'), "
            "has_table_privilege(:role, 'audit_logs', 'INSERT'), "
            "has_table_privilege(:role, 'audit_logs', 'DELETE')"), {"role": role})
        select_, insert, delete = found.one()
        return bool(select_), bool(insert), bool(delete)
