"""Pooled PostgreSQL connections the server dropped: the next delivery still gets processed.

billwatch does not ping a connection at every checkout (see ``billwatch.db._discard_closed``);
this is what stands in for the ping when the server terminates its backends (a restart).
"""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from billwatch.db import Database
from billwatch.webhooks.models import EventStatus
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, stored_event


async def terminate_other_backends(db: Database) -> int:
    """What a server restart does to billwatch's pooled connections."""
    dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        terminated = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await connection.close()
    return len(terminated)


async def test_delivery_after_the_server_dropped_pooled_connections(
        backend: str, client: httpx.AsyncClient, app: FastAPI, db: Database) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    server = Server("/webhooks/stripe", client, app)
    first = se.event("thing.happened", {"id": se.new_id("obj"), "object": "thing"})
    assert (await server.deliver(first)).status_code == 200
    assert await terminate_other_backends(db) >= 1
    second = se.event("thing.happened", {"id": se.new_id("obj"), "object": "thing"})
    response = await server.deliver(second)
    assert response.status_code == 200, response.text
    stored = await stored_event(db, second["id"])
    assert stored is not None and stored.status is EventStatus.IGNORED and stored.attempts == 1
