"""The webhook inbox migration goes down and up again on both backends, keeping stored events."""

from __future__ import annotations

import asyncio
import uuid

from alembic import command
from sqlalchemy import inspect, text

from billwatch.db import Database
from billwatch.migrations import alembic_config, upgrade

INBOX_COLUMNS = {"payload_sha256", "payload_pruned_at", "next_attempt_at", "claimed_by",
                 "claimed_at", "claimed_until"}


async def schema(url: str) -> tuple[set[str], set[str]]:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(lambda sync: (
                set(inspect(sync).get_table_names()),
                {c["name"] for c in inspect(sync).get_columns("stripe_events")}))
    finally:
        await db.dispose()


async def execute(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return [tuple(row) for row in result.all()] if result.returns_rows else []
    finally:
        await db.dispose()


INSERT = ("INSERT INTO stripe_events (id, stripe_event_id, type, stripe_created, livemode, payload,"
          " status, source, attempts, received_at) VALUES (:id, :event, 'invoice.paid',"
          " CURRENT_TIMESTAMP, false, {payload}, :status, 'webhook', 1, CURRENT_TIMESTAMP)")


async def test_down_and_up_again(fresh_url: str) -> None:
    await asyncio.to_thread(upgrade, fresh_url)
    tables, columns = await schema(fresh_url)
    assert "stripe_event_attempts" in tables and columns >= INBOX_COLUMNS
    await execute(fresh_url, INSERT.format(payload="NULL"), id=uuid.uuid4().hex,
                  event="evt_pruned_claimed", status="processing")
    await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "webhooks@-1")
    tables, columns = await schema(fresh_url)
    assert "stripe_event_attempts" not in tables and not INBOX_COLUMNS & columns
    # the old schema's statuses and a payload that is never null
    assert await execute(fresh_url, "SELECT status FROM stripe_events") == [("received",)]
    assert await execute(fresh_url, "SELECT count(*) FROM stripe_events WHERE payload IS NULL") \
        == [(0,)]
    await asyncio.to_thread(upgrade, fresh_url)
    tables, columns = await schema(fresh_url)
    assert "stripe_event_attempts" in tables and columns >= INBOX_COLUMNS
    await execute(fresh_url, INSERT.format(payload="NULL"), id=uuid.uuid4().hex,
                  event="evt_retrying", status="retrying")
    assert sorted(await execute(fresh_url, "SELECT status FROM stripe_events")) == [
        ("received",), ("retrying",)]
