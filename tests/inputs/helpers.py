"""What every input-bounds test checks: the 4xx, nothing stored, exactly one failure row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from billwatch.audit.events import Outcome
from billwatch.db import Database
from tests.support import audit_rows, free_port, snapshot
from tests.webhooks.conftest import eventually

OVERFLOWING_DATETIME = "9999-12-31T23:59:59-14:00"
"""Valid ISO 8601 whose UTC value (year 10000) no datetime can hold."""
INT64_OVERFLOW = 2**63


async def business_state(db: Database) -> dict[str, list[str]]:
    """Every business row; the alert ledger (fed by audit rows) is another domain's."""
    return {name: rows for name, rows in (await snapshot(db)).items()
            if not name.startswith(("alert", "job_"))}


async def assert_refused(db: Database, response: httpx.Response, *, status: int, error: str,
                         event: str, before: dict[str, list[str]],
                         audited_before: int = 0) -> dict[str, Any]:
    """The answer is ``status``/``error``, no business row changed, one failure row was added."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    assert await business_state(db) == before
    rows = (await audit_rows(db))[audited_before:]
    assert [(r.event_type, r.outcome) for r in rows] == [(event, Outcome.FAILURE)], \
        [(r.event_type, r.outcome, r.reason) for r in rows]
    assert rows[0].data["status_code"] == status
    assert rows[0].reason is not None and rows[0].reason.startswith(error)
    return body


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on a real uvicorn server on loopback; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="critical", access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: _started(server), within=10, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)


def local_port(response: httpx.Response) -> int | None:
    """The client-side port of the connection that carried ``response``; None once it closed."""
    stream = response.extensions["network_stream"]
    try:
        address = stream.get_extra_info("client_addr")
    except OSError:  # the server has already closed the connection
        return None
    return int(address[1])
