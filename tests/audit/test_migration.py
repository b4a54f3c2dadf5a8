"""The 0200_audit migration: rows written before it are encrypted, hashed and verifiable after."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from billwatch.accounts.actor import SystemActor
from billwatch.audit import recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditLog
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.db import Database
from billwatch.migrations import alembic_config, upgrade

ROW_ID = uuid.uuid4()
FOUNDATION_ROW = (
    "INSERT INTO audit_logs (id, occurred_at, event_type, outcome, action, reason, actor_name, "
    "resource_type, resource_id, metadata) VALUES ({id}, {at}, 'billing.refund.issued', 'success', "
    "'issued', NULL, 'cli', 'transaction', 'tx-1', {metadata})")



async def foundation_with_a_plaintext_row(url: str) -> Database:
    await asyncio.to_thread(upgrade, url, "0001_foundation")
    db = Database(url)
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
            self, fresh_url: str, keys: AuditKeys, tmp_path: Path) -> None:
        db = await foundation_with_a_plaintext_row(fresh_url)
        try:
            await asyncio.to_thread(upgrade, fresh_url)
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
                                                         keys: AuditKeys) -> None:
        db = await foundation_with_a_plaintext_row(fresh_url)
        try:
            await asyncio.to_thread(upgrade, fresh_url)
            await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "0200_audit-1")
            async with db.engine.connect() as conn:
                metadata = (await conn.execute(text("SELECT metadata FROM audit_logs"))).scalar_one()
            loaded = json.loads(metadata) if isinstance(metadata, str) else metadata
            assert loaded == {"amount_cents": 700, "note": "before the audit branch"}
        finally:
            await db.dispose()


class TestIntegrityMigration:
    async def test_0210_keeps_the_triggers_and_downgrades_cleanly(
            self, fresh_url: str, keys: AuditKeys, tmp_path: Path) -> None:
        await asyncio.to_thread(upgrade, fresh_url)
        await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "0200_audit")
        await asyncio.to_thread(upgrade, fresh_url)
        db = Database(fresh_url)
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
