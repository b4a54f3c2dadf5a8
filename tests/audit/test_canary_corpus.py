"""The assessor's canaries, sent through every input, found in no table, log, mail or response.

Each canary is fed to request bodies, headers, query strings, a CLI argument and signed webhooks
of every handled type (one of them failing in its handler); then every column of every table
(read with raw SQL, past the column types; audit metadata decrypted), every log line, every
rendered alert mail, every response and ``/metrics`` are searched for any of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import structlog
from fastapi import FastAPI
from sqlalchemy import select, text

from billwatch.alerts import mail
from billwatch.alerts.models import Alert
from billwatch.audit.models import AuditLog
from billwatch.config import Settings
from billwatch.db import Base, Database
from billwatch.logging import configure_logging
from billwatch.redaction import canonical_text
from billwatch.webhooks.handlers import HANDLERS
from tests.support import Factory, People, paid_subscription
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, drain_until_settled

PANS = ("4242424242424242", "6011111111111117", "5555555555554444", "378282246310005")
SECRETS = ("4eC39HqLyjWDarjtT1zdp7dc", "whsecCanary0123456789", "eyJjYW5hcnkiOjF9")
CVV = "739"
CANARIES = (
    "4242.4242.4242.4242", "6011/1111/1111/1117", "5555_5555_5555_4444", "3782\t822463\t10005",
    "4242+4242+4242+4242", "6011%201111%201111%201117", "5555,5555,5555,4444",
    "\uff14\uff12\uff14\uff12" * 4, "\u0664\u0662\u0664\u0662" * 4, "4242\u200b4242\u200d4242\u20604242",
    f"cvv is {CVV}", f"CVC code: {CVV}", f'{{"cvc": "{CVV}"}}', f"cvv_number={CVV}",
    "apikey_sk_live_4eC39HqLyjWDarjtT1zdp7dc", "xwhsec_whsecCanary0123456789",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJjYW5hcnkiOjF9.c2lnbmF0dXJl",
)
ALL = " ".join(CANARIES)
"""Everything at once, as one free-text value (within the 500-character bounds of reasons)."""


def leaks(value: str) -> list[str]:
    """The canaries still readable in ``value``: decoded, normalised, separators ignored."""
    for _ in range(3):
        value = unquote(value)
    readable = canonical_text(value)
    digits = re.sub(r"[\W_]", "", readable)
    found = [pan for pan in PANS if pan[:-4] in digits]
    found += [secret for secret in SECRETS if secret in readable]
    if re.search(rf"(?i)(cvv|cvc)[^0-9]{{0,16}}{CVV}(?![0-9])", readable):
        found.append(CVV)
    return found


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, (bytes, memoryview)):
        yield bytes(value).decode("utf-8", "replace")
    elif value is not None:
        yield str(value)


@pytest.fixture
def redacting_logs() -> Iterator[None]:
    """billwatch's real log configuration for one test, then the defaults back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    configure_logging("DEBUG")
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


class Inputs:
    """Sends the canaries everywhere, keeping every response."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.responses: list[httpx.Response] = []

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, url, **kwargs)
        self.responses.append(response)
        return response


def canary_headers(headers: dict[str, str], canary: str) -> dict[str, str]:
    ascii_canary = quote(canary, safe=" /:=,+\t{}\"'_.")
    return {**headers, "X-Request-ID": ascii_canary, "X-Forwarded-For": ascii_canary,
            "User-Agent": ascii_canary, "Idempotency-Key": ascii_canary[:200]}


async def through_the_api(inputs: Inputs, factory: Factory, people: People, payment_id: str) -> None:
    admin, patient = factory.headers(people.admin), factory.headers(people.patient)
    owner = people.owner_body
    for canary in (*CANARIES, ALL[:500]):
        created = await inputs.send("POST", "/admin/overrides", headers=canary_headers(admin, canary),
                                    json={**owner, "kind": "payment_exemption", "reason": canary})
        if created.status_code == 201:
            await inputs.send("POST", f"/admin/overrides/{created.json()['id']}/revoke",
                              headers=canary_headers(admin, canary), json={"reason": canary})
        await inputs.send("POST", f"/admin/transactions/{payment_id}/refund",
                          headers=canary_headers(admin, canary),
                          json={"amount_cents": 1, "reason": "service_issue", "note": canary})
        await inputs.send("POST", "/billing/checkout", headers=canary_headers(patient, canary),
                          json={**owner, "plan_code": canary[:40]})
        await inputs.send("POST", "/admin/free-grants", headers=canary_headers(admin, canary),
                          json={**owner, "plan_code": "basic_monthly", "reason": canary})
        await inputs.send("GET", "/admin/audit-logs", headers=admin,
                          params={"event_type": canary, "limit": "5"})
        await inputs.send("GET", f"/billing/owners/patient/{quote(canary)}", headers=patient)
        await inputs.send("GET", "/billing/owners/patient/" + str(people.patient.id),
                          headers={"Authorization": "Bearer " + quote(canary)})
        await inputs.send("POST", "/admin/overrides", headers=admin,
                          content=("{\"reason\": \"" + canary).encode(),)
    await inputs.send("GET", f"/billing/owners/patient/{people.patient.id}", headers=patient)
    await inputs.send("GET", f"/billing/owners/patient/{people.patient.id}", headers=admin)


def signed_events(customer: str, subscription_id: str, price: str, charge_id: str) -> list[dict[str, Any]]:
    """One event of every handled type (and one unhandled), each carrying canaries."""
    meta = {"note": ALL[:480], "owner_type": "patient"}
    sub = se.subscription(sub_id=subscription_id, customer=customer, price=price, metadata=meta)
    paid = se.invoice(invoice_id=se.new_id("in"), customer=customer, subscription_id=subscription_id,
                      price=price, amount=100, paid=True)
    paid["description"] = ALL
    failed_pi = se.declined_payment_intent(pi_id="pi_" + PANS[0], customer=customer, amount=100,
                                           code="card_declined " + CANARIES[1],
                                           decline_code="do_not_honor " + CANARIES[0])
    failed = se.invoice(invoice_id="in_" + CANARIES[1].replace("/", ""), customer=customer,
                        subscription_id=subscription_id, price=price, amount=100, paid=False,
                        attempt_count=3, payment_intent=failed_pi)
    failing = se.invoice(invoice_id=se.new_id("in"), customer=customer, subscription_id=subscription_id,
                         price=price, amount=100, paid=False, payment_intent="pi_" + PANS[1])
    refund = se.refund(refund_id="re_" + PANS[2], charge_id=charge_id, amount=1,
                       reason="requested_by_customer " + CANARIES[5], metadata=meta)
    refunded = se.charge(charge_id=charge_id, customer=customer, payment_intent=None, amount=100,
                         amount_refunded=1, refunds=[refund])
    refunded["description"] = ALL
    checkout = se.checkout_session(session_id="cs_" + PANS[3], customer=customer,
                                   subscription_id=subscription_id, metadata=meta, amount=100)
    objects = {
        "checkout.session.completed": checkout, "checkout.session.expired": checkout,
        "customer.subscription.created": sub,
        "customer.subscription.updated": sub, "customer.subscription.deleted": sub,
        "invoice.payment_succeeded": paid, "invoice.paid": paid,
        "invoice.payment_failed": failed, "charge.refunded": refunded,
        "refund.created": refund, "refund.updated": refund,
    }
    assert set(objects) == set(HANDLERS), "a handled type is missing from the corpus"
    events = [se.event(kind, obj, event_id="evt_" + PANS[i % 4] + kind.replace(".", ""))
              for i, (kind, obj) in enumerate(objects.items())]
    events.append(se.event("invoice.payment_failed", failing))  # a payment intent Stripe lacks
    broken = se.subscription(sub_id=se.new_id("sub"), customer=customer, price=price,
                             status="past_due " + CANARIES[0], metadata=meta)
    events.append(se.event("customer.subscription.updated", broken))  # its handler raises
    events.append(se.event("canary." + CANARIES[0], {"id": "obj_" + PANS[0], "note": ALL}))
    return events


async def through_the_cli(settings: Settings) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "billwatch.cli", "users", "create", "cli-canary@example.test",
        "--name", "CLI " + CANARIES[0] + " " + CANARIES[14], "--role", "patient",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BILLWATCH_DATABASE_URL": settings.database_url,
             "BILLWATCH_ENV": "development"})
    out, err = await process.communicate()
    return out.decode() + err.decode()


async def stored_strings(db: Database, settings: Settings) -> dict[str, list[str]]:
    """Every value of every column of every table, read past the column types."""
    found: dict[str, list[str]] = {}
    async with db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = (await connection.execute(text(f"SELECT * FROM {table.name}"))).all()
            found[table.name] = [s for row in rows for value in row for s in strings_in(value)]
    async with db.sessionmaker() as session:
        audit = list(await session.scalars(select(AuditLog)))
        found["audit_logs.metadata"] = [s for row in audit for s in strings_in(row.data)]
        alerts = list(await session.scalars(select(Alert)))
        found["mail"] = [part for alert in alerts for part in mail.render(alert, settings)]
    assert audit and found["stripe_events"], "the corpus reached neither the trail nor the store"
    return found


async def test_no_canary_survives_anywhere(client: httpx.AsyncClient, app: FastAPI, db: Database,
                                           factory: Factory, people: People, settings: Settings,
                                           redacting_logs: None,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    subscription, payment = await paid_subscription(db, settings, people.owner)
    inputs = Inputs(client)
    await through_the_api(inputs, factory, people, str(payment.id))
    server = Server("/webhooks/stripe", client, app)
    assert subscription.stripe_customer_id and subscription.stripe_subscription_id
    plan = settings.plan("basic_monthly")
    assert plan is not None
    for event in signed_events(subscription.stripe_customer_id, subscription.stripe_subscription_id,
                               plan.stripe_price, payment.stripe_charge_id or se.new_id("ch")):
        inputs.responses.append((await server.deliver(event)).response)
    await drain_until_settled(app)  # a failing handler's retries run out: it is failed
    cli_output = await through_the_cli(settings)
    metrics = await inputs.send("GET", "/metrics")

    assert {r.status_code for r in inputs.responses} & {200, 201}, "nothing was accepted"
    assert any(r.status_code >= 400 for r in inputs.responses), "nothing was refused"
    async with db.engine.connect() as connection:
        statuses = set((await connection.execute(text("SELECT status FROM stripe_events"))).scalars())
        cli_users = (await connection.execute(text(
            "SELECT count(*) FROM users WHERE email = 'cli-canary@example.test'"))).scalar()
    assert cli_users == 1, cli_output
    assert {"processed", "failed", "ignored"} <= statuses, statuses
    places: dict[str, list[str]] = await stored_strings(db, settings)
    places["responses"] = [s for r in inputs.responses
                           for s in (r.text, *(f"{k}: {v}" for k, v in r.headers.items()))]
    places["metrics"] = metrics.text.splitlines()
    places["cli"] = cli_output.splitlines()
    captured = capfd.readouterr()
    places["logs"] = (captured.out + captured.err).splitlines()
    assert places["logs"], "no log line was captured"
    found = {where: sorted({leak for value in values for leak in leaks(value)})
             for where, values in places.items()}
    assert not {where: leaked for where, leaked in found.items() if leaked}, [
        value for values in places.values() for value in values if leaks(value)][:5]
