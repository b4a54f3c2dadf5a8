"""Completeness: every billing, admin and manager route — and every handled webhook — writes rows.

The routes are read from the OpenAPI document, so a route added without an audit event, or
without a scenario here, fails this file instead of slipping through.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role, User
from billwatch.alerts.models import AlertKind
from billwatch.alerts.raising import raise_alert
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.billing.models import Subscription, Transaction
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.webhooks.handlers import HANDLERS
from tests.support import TEST_WEBHOOK_SECRET, Factory, audit_rows, keyed, paid_subscription
from tests.webhooks import stripe_events
from tests.webhooks.conftest import drain_until_settled

AUDITED_PREFIXES = ("/billing", "/admin", "/patients")
NOT_AUDITED = {
    ("GET", "/healthz"): "liveness probe, touches no billing data",
    ("GET", "/metrics"): "Prometheus scrape of aggregate counters",
    ("GET", "/me"): "who the token belongs to; no billing data",
    ("POST", "/webhooks/stripe"): "audited per event (received/failed), see TestWebhooks",
}
Call = Callable[[], Awaitable[httpx.Response]]


def operations(app: FastAPI) -> dict[tuple[str, str], str | None]:
    """Every operation in the OpenAPI document and the audit event it declares."""
    found: dict[tuple[str, str], str | None] = {}
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            found[(method.upper(), path)] = operation.get("x-audit-event")
    return found


@dataclass
class World:
    client: httpx.AsyncClient
    db: Database
    factory: Factory
    settings: Settings
    admin: User
    patient: User
    proxy: User

    def as_(self, user: User) -> dict[str, str]:
        return self.factory.headers(user)

    @property
    def owner(self) -> dict[str, str]:
        return {"owner_type": "patient", "owner_id": str(self.patient.id)}

    async def paid(self) -> tuple[Subscription, Transaction]:
        return await paid_subscription(self.db, self.settings,
                                       OwnerRef(OwnerType.PATIENT, self.patient.id))


async def checkout(w: World) -> Call:
    return lambda: w.client.post("/billing/checkout", headers=w.as_(w.patient),
                                 json={**w.owner, "plan_code": "basic_monthly"})


async def read_account(w: World) -> Call:
    return lambda: w.client.get(f"/billing/owners/patient/{w.patient.id}", headers=w.as_(w.patient))


async def cancel(w: World) -> Call:
    subscription, _ = await w.paid()
    return lambda: w.client.post(f"/billing/subscriptions/{subscription.id}/cancel",
                                 headers=w.as_(w.patient), json={"at_period_end": True})


async def portal(w: World) -> Call:
    await w.paid()
    return lambda: w.client.post("/billing/portal", headers=w.as_(w.patient), json=w.owner)


async def refund(w: World) -> Call:
    _, payment = await w.paid()
    return lambda: w.client.post(f"/admin/transactions/{payment.id}/refund",
                                 headers=keyed(w.as_(w.admin)),
                                 json={"amount_cents": 100, "reason": "other"})


async def free_grant(w: World) -> Call:
    return lambda: w.client.post("/admin/free-grants", headers=w.as_(w.admin), json={
        **w.owner, "plan_code": "basic_monthly", "months": 3, "reason": "clinical trial"})


async def create_override(w: World) -> Call:
    await w.paid()  # a discount applies to the owner's live Stripe subscription
    return lambda: w.client.post("/admin/overrides", headers=w.as_(w.admin), json={
        **w.owner, "kind": "discount", "percent_off": 10, "reason": "loyalty"})


async def revoke_override(w: World) -> Call:
    created = await (await create_override(w))()
    assert created.status_code == 201, created.text
    return lambda: w.client.post(f"/admin/overrides/{created.json()['id']}/revoke",
                                 headers=w.as_(w.admin), json={"reason": "ended"})


async def assign_manager(w: World) -> Call:
    return lambda: w.client.post(f"/patients/{w.patient.id}/billing-managers",
                                 headers=w.as_(w.patient), json={"proxy_id": str(w.proxy.id)})


async def list_managers(w: World) -> Call:
    return lambda: w.client.get(f"/patients/{w.patient.id}/billing-managers",
                                headers=w.as_(w.patient))


async def remove_manager(w: World) -> Call:
    assigned = await (await assign_manager(w))()
    assert assigned.status_code == 201, assigned.text
    return lambda: w.client.delete(f"/patients/{w.patient.id}/billing-managers/{w.proxy.id}",
                                   headers=w.as_(w.patient))


async def list_alerts(w: World) -> Call:
    return lambda: w.client.get("/admin/alerts", headers=w.as_(w.admin))


async def list_incidents(w: World) -> Call:
    return lambda: w.client.get("/admin/alerts/incidents", headers=w.as_(w.admin))


async def acknowledge_alert(w: World) -> Call:
    async with w.db.unit_of_work() as session:
        alert = raise_alert(session, AlertKind.AUDIT_WRITE_FAILURE, dedup_key=uuid.uuid4().hex,
                            subject="completeness check", payload={"n": 1})
    assert alert is not None
    return lambda: w.client.post(f"/admin/alerts/{alert.id}/acknowledge", headers=w.as_(w.admin),
                                 json={"note": "seen"})


async def list_audit(w: World) -> Call:
    return lambda: w.client.get("/admin/audit-logs", headers=w.as_(w.admin))


async def export_audit(w: World) -> Call:
    return lambda: w.client.get("/admin/audit-logs/export", headers=w.as_(w.admin),
                                params={"format": "csv"})


async def read_audit(w: World) -> Call:
    await (await list_audit(w))()
    [row] = await audit_rows(w.db, event_type=AuditEvent.AUDIT_READ.value)
    return lambda: w.client.get(f"/admin/audit-logs/{row.id}", headers=w.as_(w.admin))


SCENARIOS: dict[tuple[str, str], Callable[[World], Awaitable[Call]]] = {
    ("POST", "/billing/checkout"): checkout,
    ("GET", "/billing/owners/{owner_type}/{owner_id}"): read_account,
    ("POST", "/billing/subscriptions/{subscription_id}/cancel"): cancel,
    ("POST", "/billing/portal"): portal,
    ("POST", "/admin/transactions/{transaction_id}/refund"): refund,
    ("POST", "/admin/free-grants"): free_grant,
    ("POST", "/admin/overrides"): create_override,
    ("POST", "/admin/overrides/{override_id}/revoke"): revoke_override,
    ("POST", "/patients/{patient_id}/billing-managers"): assign_manager,
    ("GET", "/patients/{patient_id}/billing-managers"): list_managers,
    ("DELETE", "/patients/{patient_id}/billing-managers/{proxy_id}"): remove_manager,
    ("GET", "/admin/alerts"): list_alerts,
    ("POST", "/admin/alerts/{alert_id}/acknowledge"): acknowledge_alert,
    ("GET", "/admin/alerts/incidents"): list_incidents,
    ("GET", "/admin/audit-logs"): list_audit,
    ("GET", "/admin/audit-logs/export"): export_audit,
    ("GET", "/admin/audit-logs/{audit_log_id}"): read_audit,
}


async def count(db: Database, event: str, outcome: Outcome) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditLog).where(
            AuditLog.event_type == event, AuditLog.outcome == outcome)) or 0)


@pytest.fixture
async def world(client: httpx.AsyncClient, db: Database, factory: Factory,
                settings: Settings) -> World:
    return World(client, db, factory, settings, await factory.user(Role.ADMIN),
                 await factory.user(Role.PATIENT), await factory.user(Role.PROXY))


class TestEveryRouteDeclaresItsEvent:
    def test_billing_admin_and_manager_routes_declare_a_registered_event(self, app: FastAPI) -> None:
        for (method, path), event in operations(app).items():
            if path.startswith(AUDITED_PREFIXES):
                assert event is not None, f"{method} {path} declares no x-audit-event"
                AuditEvent(event)
            else:
                assert (method, path) in NOT_AUDITED, f"{method} {path}: audit it or say why not"

    def test_every_audited_route_has_a_scenario_here(self, app: FastAPI) -> None:
        audited = {op for op, event in operations(app).items() if event is not None}
        assert audited == set(SCENARIOS), "add a success scenario for each new audited route"


class TestEveryRouteWritesItsRow:
    @pytest.mark.parametrize("operation", list(SCENARIOS), ids=" ".join)
    async def test_success_writes_one_success_row(self, app: FastAPI, world: World,
                                                  operation: tuple[str, str]) -> None:
        event = operations(app)[operation]
        assert event is not None
        call = await SCENARIOS[operation](world)
        before = await count(world.db, event, Outcome.SUCCESS)
        response = await call()
        assert response.is_success, response.text
        assert await count(world.db, event, Outcome.SUCCESS) == before + 1

    @pytest.mark.parametrize("operation", list(SCENARIOS), ids=" ".join)
    async def test_failure_writes_one_failure_row(self, app: FastAPI, world: World,
                                                  operation: tuple[str, str]) -> None:
        method, path = operation
        declared = operations(app)[operation]
        event = (AuditEvent.AUDIT_ACCESS_DENIED.value if path.startswith("/admin/audit-logs")
                 else declared)
        assert event is not None
        url = path.format(**{name: ("patient" if name == "owner_type" else str(uuid.uuid4()))
                             for name in _parameters(path)})
        response = await world.client.request(method, url, json={} if method == "POST" else None)
        assert response.status_code in (401, 422), response.text
        rows = await audit_rows(world.db, outcome=Outcome.FAILURE)
        assert [row.event_type for row in rows] == [event]
        assert rows[0].client_ip == "203.0.113.7" and rows[0].reason


def _parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


class TestWebhooks:
    """Every event type billwatch handles — and the ones it ignores or refuses — leaves rows."""

    @pytest.mark.parametrize("event_type", sorted(HANDLERS))
    async def test_each_handled_type_writes_rows(self, client: httpx.AsyncClient, app: FastAPI,
                                                 db: Database,
                                                 event_type: str) -> None:
        event = stripe_events.event(event_type, _object_for(event_type))
        response = await _deliver(client, app, event)
        assert response.status_code < 600
        rows = await audit_rows(db, stripe_event_id=event["id"])
        assert rows, f"{event_type} wrote no audit row"
        assert {row.event_type for row in rows} & {AuditEvent.WEBHOOK_RECEIVED.value,
                                                   AuditEvent.WEBHOOK_FAILED.value}

    async def test_an_ignored_type_and_a_forged_signature_write_rows(
            self, client: httpx.AsyncClient, app: FastAPI, db: Database) -> None:
        ignored = stripe_events.event("charge.captured", stripe_events.shape("charge"))
        assert (await _deliver(client, app, ignored)).status_code == 200
        assert await audit_rows(db, stripe_event_id=ignored["id"])
        forged = stripe_events.encode(stripe_events.event("invoice.paid", {}))
        response = await client.post("/webhooks/stripe", content=forged, headers={
            "Stripe-Signature": stripe_events.sign(forged, secrets=("whsec_not_ours",)),
            "Content-Type": "application/json"})
        assert response.status_code == 400
        rows = await audit_rows(db, event_type=AuditEvent.WEBHOOK_FAILED.value)
        assert len(rows) == 1 and rows[0].outcome == Outcome.FAILURE


async def _deliver(client: httpx.AsyncClient, app: FastAPI,
                   event: dict[str, Any]) -> httpx.Response:
    """Deliver, then process the inbox until every retry has run (a failure is then audited)."""
    body = stripe_events.encode(event)
    response = await client.post("/webhooks/stripe", content=body, headers={
        "Stripe-Signature": stripe_events.sign(body, secrets=(TEST_WEBHOOK_SECRET,)),
        "Content-Type": "application/json"})
    await drain_until_settled(app)
    return response


def _object_for(event_type: str) -> dict[str, Any]:
    customer, sub_id = stripe_events.new_id("cus"), stripe_events.new_id("sub")
    if event_type.startswith("customer.subscription."):
        return stripe_events.subscription(sub_id=sub_id, customer=customer,
                                          price="billwatch_basic_monthly")
    if event_type.startswith("invoice."):
        return stripe_events.invoice(invoice_id=stripe_events.new_id("in"), customer=customer,
                                     subscription_id=sub_id, price="billwatch_basic_monthly",
                                     amount=1500, paid=event_type != "invoice.payment_failed")
    if event_type.startswith("refund."):
        return stripe_events.refund(refund_id=stripe_events.new_id("re"),
                                    charge_id=stripe_events.new_id("ch"), amount=1500)
    if event_type == "charge.refunded":
        return stripe_events.charge(charge_id=stripe_events.new_id("ch"), customer=customer,
                                    payment_intent=None, amount=1500, amount_refunded=1500)
    return stripe_events.checkout_session(session_id=stripe_events.new_id("cs"), customer=customer,
                                          subscription_id=sub_id, metadata={}, amount=1500)
