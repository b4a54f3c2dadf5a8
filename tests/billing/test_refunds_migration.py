"""The money_refunds migration branch goes down and up again, and matches the models."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from billwatch.db import Database
from billwatch.migrations import alembic_config, upgrade

INDEX = "ix_transactions_kind_status_time"


async def schema(url: str) -> tuple[set[str], set[str], set[str]]:
    """Tables, the transactions indexes and the idempotency_keys unique constraints."""
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            def read(sync: object) -> tuple[set[str], set[str], set[str]]:
                found = inspect(sync)
                tables = set(found.get_table_names())
                indexes = {str(i["name"]) for i in found.get_indexes("transactions")}
                uniques = ({str(u["name"]) for u in found.get_unique_constraints("idempotency_keys")}
                           if "idempotency_keys" in tables else set())
                return tables, indexes, uniques
            return await conn.run_sync(read)
    finally:
        await db.dispose()


async def test_down_and_up_again(fresh_url: str) -> None:
    await asyncio.to_thread(upgrade, fresh_url)
    tables, indexes, uniques = await schema(fresh_url)
    assert "idempotency_keys" in tables and INDEX in indexes
    assert uniques == {"uq_idempotency_keys_scope"}
    await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "money_refunds@-2")
    tables, indexes, _ = await schema(fresh_url)
    assert "idempotency_keys" not in tables and INDEX not in indexes and "transactions" in tables
    await asyncio.to_thread(upgrade, fresh_url)
    tables, indexes, _ = await schema(fresh_url)
    assert "idempotency_keys" in tables and INDEX in indexes
