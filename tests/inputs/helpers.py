"""What every input-bounds test checks: the 4xx, nothing stored, exactly one failure row."""

from __future__ import annotations

from typing import Any

import httpx

from billwatch.audit.events import Outcome
from billwatch.db import Database
from tests.support import audit_rows, snapshot

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
