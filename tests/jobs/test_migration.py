"""The alerts_jobs migration branch goes down and up again on both backends."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from billwatch.db import Database
from billwatch.migrations import alembic_config, upgrade

MINE = {"alerts", "alert_cooldowns", "job_runs", "daily_billing_metrics", "alert_incidents",
        "installation"}



async def tables(url: str) -> set[str]:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await db.dispose()


async def test_down_and_up_again(fresh_url: str) -> None:
    await asyncio.to_thread(upgrade, fresh_url)
    assert await tables(fresh_url) >= MINE
    await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "alerts_jobs@-2")
    remaining = await tables(fresh_url)
    assert not MINE & remaining and {"audit_logs", "subscriptions"} <= remaining
    await asyncio.to_thread(upgrade, fresh_url)
    assert await tables(fresh_url) >= MINE
