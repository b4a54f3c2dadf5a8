"""The roles ``billwatch audit grants`` prints: a service role that only adds audit rows, a sealer
role that only adds seals and checkpoints, and a maintenance path only the owner can open."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import SystemActor
from billwatch.accounts.models import Role
from billwatch.audit import crypto, recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditLog
from billwatch.audit.partitions import Month, ensure_partitions, partitions
from billwatch.audit.roles import app_role_grants, sealer_role_grants
from billwatch.audit.sealing import checkpoint, seal
from billwatch.audit.verify import verify
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from tests.audit.conftest import write_rows
from tests.audit.helpers import DEFAULT_PARTITION

FAKE_SEAL = ("INSERT INTO audit_seals (seq, audit_log_id, chain_hash, sealed_at) "
             "VALUES (999999, :id, :hash, now())")
FAKE_CHECKPOINT = (
    "INSERT INTO audit_checkpoints (id, last_seq, row_count, batch_rows, head_hash, created_at, "
    "signature, file_name, version) VALUES (:id, 999999, 999999, 0, :hash, now(), :hash, 'x', 2)")


@dataclass
class Roles:
    app: Database
    sealer: Database
    sealer_url: str


async def _create_role(db: Database, prefix: str) -> str:
    role = f"{prefix}_{uuid.uuid4().hex[:10]}"
    async with db.engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    return role


@pytest.fixture
async def roles(db: Database, backend: str, database_url: str) -> AsyncIterator[Roles]:
    """The test database reached as two fresh roles holding exactly what `audit grants` prints."""
    if backend != "postgresql":
        pytest.skip("roles and grants are PostgreSQL's")
    app_role = await _create_role(db, "billwatch_app")
    sealer_role = await _create_role(db, "billwatch_sealer")
    async with db.engine.begin() as conn:
        for statement in (*app_role_grants(app_role), *sealer_role_grants(sealer_role)):
            await conn.execute(text(statement))
    sealer_url = database_url.replace("postgres@", f"{sealer_role}@", 1)
    found = Roles(Database(database_url.replace("postgres@", f"{app_role}@", 1),
                           runtime=db.runtime),
                  Database(sealer_url, runtime=db.runtime), sealer_url)
    yield found
    await found.app.dispose()
    await found.sealer.dispose()
    async with db.engine.begin() as conn:
        for role in (app_role, sealer_role):
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))


async def _one_row(db: Database) -> None:
    async with db.unit_of_work() as session:
        user = await accounts.create_user(session, email=f"{uuid.uuid4().hex[:8]}@example.test",
                                          name="Role check", role=Role.PATIENT)
        recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"),
                        data={"user": str(user.id)})


async def _rows(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditLog)) or 0)


class TestServiceRole:
    async def test_writes_and_reads_rows_but_cannot_change_them(self, roles: Roles) -> None:
        await _one_row(roles.app)
        for statement in (update(AuditLog).values(reason="edited"), delete(AuditLog)):
            with pytest.raises(DBAPIError, match="permission denied"):
                async with roles.app.unit_of_work() as session:
                    await session.execute(statement)
        with pytest.raises(DBAPIError, match="permission denied"):
            async with roles.app.engine.begin() as conn:
                await conn.execute(text("TRUNCATE audit_logs"))
        assert await _rows(roles.app) == 1

    async def test_set_local_maintenance_then_delete_is_refused(self, roles: Roles) -> None:
        await _one_row(roles.app)
        with pytest.raises(DBAPIError, match="permission denied"):
            async with roles.app.engine.begin() as conn:
                await conn.execute(text("SET LOCAL billwatch.maintenance = 'on'"))
                await conn.execute(delete(AuditLog))
        assert await _rows(roles.app) == 1

    async def test_cannot_open_the_maintenance_path(self, roles: Roles) -> None:
        await _one_row(roles.app)
        with pytest.raises(DBAPIError, match="permission denied"):
            async with roles.app.unit_of_work() as session, maintenance(session, "archive"):
                await session.execute(delete(AuditLog))
        with pytest.raises(DBAPIError, match="permission denied"):
            async with roles.app.engine.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO audit_maintenance_windows VALUES (txid_current(), 'x', "
                    "session_user, now())"))
        assert await _rows(roles.app) == 1

    async def test_fake_seal_and_fake_checkpoint_are_refused(self, roles: Roles, keys: AuditKeys,
                                                            tmp_path: Path) -> None:
        await _one_row(roles.app)
        async with roles.app.sessionmaker() as session:
            row_id = await session.scalar(select(AuditLog.id))
        for statement, values in ((FAKE_SEAL, {"id": row_id, "hash": b"\0" * 32}),
                                  (FAKE_CHECKPOINT, {"id": uuid.uuid4(), "hash": b"\0" * 32})):
            with pytest.raises(DBAPIError, match="permission denied"):
                async with roles.app.engine.begin() as conn:
                    await conn.execute(text(statement), values)
        with pytest.raises(DBAPIError, match="permission denied"):
            await seal(roles.app, keys=keys, store=CheckpointStore(tmp_path))
        assert (await verify(roles.app, keys=keys, store=CheckpointStore(tmp_path))).ok


    async def test_partitions_are_closed_to_it_but_it_can_make_them_ahead(
            self, roles: Roles, db: Database) -> None:
        await _one_row(roles.app)
        month = Month.of(utcnow()).plus(100)
        assert await ensure_partitions(roles.app, ahead=0, first=month) == [month.partition]
        async with db.engine.connect() as conn:
            made = await partitions(conn)
        assert month.partition in made
        for table in (Month.of(utcnow()).partition, month.partition, DEFAULT_PARTITION):
            for statement in (f"SELECT count(*) FROM {table}", f"DELETE FROM {table}"):
                with pytest.raises(DBAPIError, match="permission denied"):
                    async with roles.app.engine.begin() as conn:
                        await conn.execute(text(statement))
        with pytest.raises(DBAPIError, match="permission denied"):
            async with roles.app.engine.begin() as conn:
                await conn.execute(text("SELECT billwatch_audit_create_partition(CURRENT_DATE)"))
        assert await _rows(roles.app) == 1


class TestSealerRole:
    async def test_seals_and_verifies_but_cannot_change_anything(
            self, roles: Roles, keys: AuditKeys, tmp_path: Path) -> None:
        await _one_row(roles.app)
        store = CheckpointStore(tmp_path)
        assert (await seal(roles.sealer, keys=keys, store=store)).sealed == 1
        assert (await verify(roles.sealer, keys=keys, store=store)).ok
        for statement in ("DELETE FROM audit_seals", "DELETE FROM audit_logs",
                          "UPDATE audit_checkpoints SET last_seq = 0"):
            with pytest.raises(DBAPIError, match="permission denied"):
                async with roles.sealer.engine.begin() as conn:
                    await conn.execute(text(statement))
        with pytest.raises(DBAPIError, match="permission denied"):
            async with roles.sealer.unit_of_work() as session, maintenance(session, "archive"):
                pass

    async def test_the_configured_job_seals_as_the_sealer_role(
            self, roles: Roles, settings: Settings, tmp_path: Path) -> None:
        configured = settings.model_copy(update={
            "audit_sealer_database_url": SecretStr(roles.sealer_url),
            "audit_checkpoint_dir": tmp_path / "checkpoints"})
        keys = crypto.keys_for(configured)  # what the job seals with, and the app's runtime has
        await _one_row(roles.app)
        result = await checkpoint(roles.app, configured)
        assert result.sealed == 1
        store = CheckpointStore(tmp_path / "checkpoints")
        assert (await verify(roles.app, keys=keys, store=store)).ok


class TestOwner:
    async def test_the_setting_alone_no_longer_opens_the_path(self, db: Database, backend: str,
                                                              keys: AuditKeys) -> None:
        """Even the owner gets through only by calling the function, never by a setting."""
        await write_rows(db, 3)
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.engine.begin() as conn:
                if backend == "postgresql":
                    await conn.execute(text("SET LOCAL billwatch.maintenance = 'on'"))
                await conn.execute(delete(AuditLog))
        assert await _rows(db) == 3
        async with db.unit_of_work() as session, maintenance(session, "archive"):
            await session.execute(delete(AuditLog).where(AuditLog.id.in_(
                select(AuditLog.id).limit(1).scalar_subquery())))
        assert await _rows(db) == 2
