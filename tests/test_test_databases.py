"""The test databases themselves: the reset between tests and the migrated copies.

The reset deletes table by table, children first, and only where a row was found; a table it
missed would leak one test's rows into the next, so this checks it against every table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text

from billwatch.accounts.models import Role
from billwatch.db import Base, Database
from tests.audit.conftest import write_rows
from tests.support import Factory, reset_database


async def row_counts(db: Database) -> dict[str, int]:
    async with db.engine.connect() as conn:
        return {table.name: int(await conn.scalar(select(func.count()).select_from(table)) or 0)
                for table in Base.metadata.sorted_tables}


class TestReset:
    async def test_empties_every_table_a_test_filled(self, db: Database, factory: Factory) -> None:
        if db.dialect != "postgresql":
            pytest.skip("each SQLite test gets a copy of the template instead")
        admin = await factory.user(Role.ADMIN)
        patient = await factory.user(Role.PATIENT)
        await factory.organization(billing_admins=[admin], members=[patient])  # parent and children
        await write_rows(db, 5)
        filled = {name for name, rows in (await row_counts(db)).items() if rows}
        assert {"users", "organizations", "organization_members", "audit_logs"} <= filled

        await reset_database(db)

        assert {name: rows for name, rows in (await row_counts(db)).items() if rows} == {}

    async def test_an_empty_database_is_left_as_it_is(self, db: Database) -> None:
        if db.dialect != "postgresql":
            pytest.skip("each SQLite test gets a copy of the template instead")
        await reset_database(db)  # the db fixture has just reset it: nothing to find
        assert set((await row_counts(db)).values()) == {0}


@pytest.fixture
async def own_db(fresh_migrated_url: str) -> AsyncIterator[Database]:
    database = Database(fresh_migrated_url)
    yield database
    await database.dispose()


class TestFreshMigratedDatabase:
    async def test_is_at_the_newest_schema_and_shares_nothing_with_db(
            self, own_db: Database, db: Database, factory: Factory) -> None:
        async with db.engine.connect() as conn:
            expected = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        async with own_db.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert versions == expected and versions

        before = await row_counts(own_db)  # what the migrations wrote (the installation row)
        await factory.user(Role.ADMIN)  # written to db, not to the copy
        assert (await row_counts(db))["users"] == 1
        assert await row_counts(own_db) == before and before["users"] == 0
