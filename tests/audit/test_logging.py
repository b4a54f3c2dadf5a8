"""Application logs: JSON lines on stdout, redacted, whoever wrote them."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx

from billwatch.accounts.models import Role
from billwatch.audit.events import AuditEvent
from billwatch.db import Database
from tests.support import Factory, audit_rows

SCRIPT = """
import logging, structlog
from billwatch.logging import configure_logging
configure_logging("INFO")
configure_logging("INFO")  # configuring twice must not double every stdlib line
log = structlog.get_logger("billwatch.test")
log.info("charge", card="4111 1111 1111 1111", cvc="123",
         headers={"Authorization": "Bearer abcdefghijklmnopqrstuvwxyz012345"},
         note="one line\\nlevel=info event=forged")
logging.getLogger("uvicorn.error").error("client sent 4242-4242-4242-4242 sk_live_abcdefgh1234")
try:
    raise ValueError("card 5555 5555 5555 4444 declined")
except ValueError:
    log.exception("failed")
"""


async def test_every_line_is_redacted_json() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == [
        "charge", "client sent ****-****-****-4242 [REDACTED]", "failed"]
    text = out.decode()
    for secret in ("4111 1111 1111", "4242-4242-4242", "5555 5555 5555", "sk_live_",
                   "abcdefghijklmnopqrstuvwxyz", '"cvc"'):
        assert secret not in text, secret
    assert events[0]["note"] == "one line\\x0alevel=info event=forged"
    assert events[1]["logger"] == "uvicorn.error" and events[1]["level"] == "error"


async def test_error_responses_carry_no_card_numbers(client: httpx.AsyncClient, factory: Factory,
                                                     db: Database) -> None:
    patient = await factory.user(Role.PATIENT)
    response = await client.post("/billing/checkout", headers=factory.headers(patient), json={
        "owner_type": "patient", "owner_id": str(patient.id),
        "plan_code": "plan_4111111111111111"})
    assert "4111111111111111" not in response.text and response.status_code in (404, 422)
    for row in await audit_rows(db, event_type=AuditEvent.CHECKOUT_CREATED.value):
        assert "41111111111" not in (row.reason or "") + json.dumps(row.data)
