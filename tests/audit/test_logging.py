"""Application logs: JSON lines on stdout, redacted, whoever wrote them."""

from __future__ import annotations

import asyncio
import json
import os
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


CANARY = "param-canary-Zq9"
DB_ERROR_SCRIPT = """
import asyncio, logging, sys, uuid
from datetime import UTC, datetime
from sqlalchemy import text
from billwatch.db import Database
from billwatch.logging import configure_logging
configure_logging("DEBUG")
log = logging.getLogger("billwatch.test")

async def main() -> None:
    db = Database(sys.argv[1], echo=True)
    insert = text("INSERT INTO users (id, email, name, role, created_at) "
                  "VALUES (:id, :email, :name, 'patient', :created_at)")
    try:
        for _ in range(2):  # the second insert breaks the unique e-mail
            async with db.unit_of_work() as session:
                await session.execute(insert, {
                    "id": uuid.uuid4().hex, "email": "same@example.test",
                    "name": sys.argv[2] + " 4242 4242 4242 4242", "created_at": datetime.now(UTC)})
    except Exception:
        log.exception("db_failed")
    finally:
        await db.dispose()

asyncio.run(main())
"""


async def test_a_database_error_logs_no_parameters(database_url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DB_ERROR_SCRIPT, database_url, CANARY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    failed = [e for e in events if e["event"] == "db_failed"]
    assert len(failed) == 1 and "IntegrityError" in failed[0]["exception"], events[-3:]
    assert "hidden due to hide_parameters" in out.decode()
    for secret in (CANARY, "4242 4242 4242"):
        assert secret not in out.decode() + err.decode(), secret


THIRD_PARTY_SCRIPT = """
import logging
from billwatch.logging import configure_logging
configure_logging("DEBUG")
from stripe import _util
_util.log_debug("Post details", post_data="card[number]=4242424242424242&card%5Bcvc%5D=123"
                "&metadata[note]=cvv%20is%20987")
_util.log_info("Request to Stripe api", api_key="sk_live_4eC39HqLyjWDarjtT1zdp7dc")
logging.getLogger("httpx").debug("HTTP Request: POST https://x.test headers="
                                 "{'authorization': 'Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc'}")
logging.getLogger("httpcore.http11").debug("send_request_body.started body=whsec_abcdef0123456")
logging.getLogger("sqlalchemy.engine.Engine").debug("Row ('6011/1111/1111/1117',)")
"""


async def test_third_party_debug_lines_go_through_the_redactor() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", THIRD_PARTY_SCRIPT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "STRIPE_LOG": "debug"})
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert {e["logger"] for e in events} >= {"stripe", "httpx", "httpcore.http11",
                                             "sqlalchemy.engine.Engine"}
    assert err.decode() == ""  # nothing printed past the handler (the SDK's own console output)
    # every field but the timestamp, whose microseconds may hold "987" or "123" by chance
    logged = json.dumps([{k: v for k, v in e.items() if k != "timestamp"} for e in events])
    for secret in ("4242424242424242", "=123", "987", "4eC39HqLyjWDarjtT1zdp7dc", "whsec_abc",
                   "6011/1111/1111"):
        assert secret not in logged, secret
