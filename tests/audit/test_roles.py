"""The service role the README prescribes: INSERT and SELECT on the audit tables, nothing more."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import SystemActor
from billwatch.accounts.models import Role
from billwatch.audit import recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditLog
from billwatch.audit.roles import app_role_grants
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.db import Database


@pytest.fixture
async def app_db(db: Database, backend: str, database_url: str) -> AsyncIterator[Database]:
    """The test database, reached as a fresh role holding exactly the README's grants."""
    if backend != "postgresql":
        pytest.skip("roles and grants are PostgreSQL's")
    role = f"billwatch_app_{uuid.uuid4().hex[:10]}"
    async with db.engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        for statement in app_role_grants(role):
            await conn.execute(text(statement))
    as_role = Database(database_url.replace("postgres@", f"{role}@", 1))
    yield as_role
    await as_role.dispose()
    async with db.engine.begin() as conn:
        await conn.execute(text(f"DROP OWNED BY {role}"))
        await conn.execute(text(f"DROP ROLE {role}"))


class TestServiceRole:
    async def test_writes_seals_and_reads_but_cannot_change_audit_rows(
            self, app_db: Database, keys: AuditKeys, tmp_path: Path) -> None:
        async with app_db.unit_of_work() as session:
            user = await accounts.create_user(session, email=f"{uuid.uuid4().hex[:8]}@example.test",
                                              name="Role check", role=Role.PATIENT)
            recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"),
                            data={"user": str(user.id)})
        store = CheckpointStore(tmp_path)
        assert (await seal(app_db, keys=keys, store=store)).sealed == 1
        assert (await verify(app_db, keys=keys, store=store)).ok

        for statement in (update(AuditLog).values(reason="edited"), delete(AuditLog)):
            with pytest.raises(DBAPIError, match="permission denied"):
                async with app_db.unit_of_work() as session:
                    await session.execute(statement)
        with pytest.raises(DBAPIError, match="permission denied"):
            async with app_db.unit_of_work() as session, maintenance(session, "archive"):
                await session.execute(delete(AuditLog))
        with pytest.raises(DBAPIError, match="permission denied"):
            async with app_db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE audit_logs"))
