"""Every billing route against every kind of caller: who may, who may not, and what is audited.

For each (route, caller) pair the test checks the status, then the audit trail: an allowed call
writes exactly one success row of the route's event and changes business rows; a refused call
writes exactly one failure row and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import OwnerType, Role, User
from billwatch.audit.events import Outcome
from billwatch.billing import overrides
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.managers import service as managers
from billwatch.payments.gateway import PaymentsGateway
from tests.support import Factory, audit_rows, keyed, paid_subscription, snapshot

PERSONAS = ["admin", "owner", "assigned_proxy", "unassigned_proxy", "other_patient", "anonymous"]


@dataclass
class World:
    db: Database
    settings: Settings
    factory: Factory
    admin: User
    patient: User
    proxy: User
    stranger_proxy: User
    other_patient: User

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef(OwnerType.PATIENT, self.patient.id)

    def headers(self, persona: str) -> dict[str, str]:
        user = {"admin": self.admin, "owner": self.patient, "assigned_proxy": self.proxy,
                "unassigned_proxy": self.stranger_proxy, "other_patient": self.other_patient,
                }.get(persona)
        return self.factory.headers(user) if user else {}

    async def free_subscription_id(self) -> uuid.UUID:
        async with self.db.unit_of_work() as session:
            grant = await overrides.grant_free_subscription(
                session, self.settings, actor=Actor(self.admin.id, Role.ADMIN), owner=self.owner,
                plan_code="basic_monthly", months=3, reason="matrix setup")
            assert grant.subscription_id is not None
            return grant.subscription_id

    async def discount_override_id(self) -> uuid.UUID:
        await paid_subscription(self.db, self.settings, self.owner)
        override = await overrides.create_override(
            self.db, PaymentsGateway(self.settings), self.settings,
            actor=Actor(self.admin.id, Role.ADMIN), owner=self.owner,
            kind=overrides.OverrideKind.DISCOUNT, percent_off=10, reason="matrix setup")
        return override.id

    async def new_assigned_proxy(self) -> User:
        proxy = await self.factory.user(Role.PROXY)
        async with self.db.unit_of_work() as session:
            await managers.assign_manager(session, actor=Actor(self.patient.id, Role.PATIENT),
                                          patient_id=self.patient.id, proxy_id=proxy.id)
        return proxy


@pytest.fixture
async def world(db: Database, settings: Settings, factory: Factory) -> World:
    w = World(db, settings, factory, admin=await factory.user(Role.ADMIN),
              patient=await factory.user(Role.PATIENT), proxy=await factory.user(Role.PROXY),
              stranger_proxy=await factory.user(Role.PROXY),
              other_patient=await factory.user(Role.PATIENT))
    async with db.unit_of_work() as session:
        await managers.assign_manager(session, actor=Actor(w.patient.id, Role.PATIENT),
                                      patient_id=w.patient.id, proxy_id=w.proxy.id)
    return w


Request = tuple[str, str, dict[str, object] | None]
Prepare = Callable[[World], Awaitable[Request]]


async def _checkout(w: World) -> Request:
    return "POST", "/billing/checkout", {"owner_type": "patient", "owner_id": str(w.patient.id),
                                         "plan_code": "basic_monthly"}


async def _read(w: World) -> Request:
    return "GET", f"/billing/owners/patient/{w.patient.id}", None


async def _cancel(w: World) -> Request:
    return "POST", f"/billing/subscriptions/{await w.free_subscription_id()}/cancel", {
        "at_period_end": False, "reason": "matrix"}


async def _portal(w: World) -> Request:
    return "POST", "/billing/portal", {"owner_type": "patient", "owner_id": str(w.patient.id)}


async def _refund(w: World) -> Request:
    _, payment = await paid_subscription(w.db, w.settings, w.owner)
    return "POST", f"/admin/transactions/{payment.id}/refund", {
        "amount_cents": 500, "reason": "requested_by_customer"}


async def _free_grant(w: World) -> Request:
    return "POST", "/admin/free-grants", {"owner_type": "patient", "owner_id": str(w.patient.id),
                                          "plan_code": "plus_monthly", "months": 2,
                                          "reason": "hardship programme"}


async def _override(w: World) -> Request:
    await paid_subscription(w.db, w.settings, w.owner)  # a discount applies to a live subscription
    return "POST", "/admin/overrides", {"owner_type": "patient", "owner_id": str(w.patient.id),
                                        "kind": "discount", "percent_off": 20,
                                        "reason": "loyalty discount"}


async def _revoke(w: World) -> Request:
    return "POST", f"/admin/overrides/{await w.discount_override_id()}/revoke", {
        "reason": "programme ended"}


async def _assign(w: World) -> Request:
    newcomer = await w.factory.user(Role.PROXY)
    return "POST", f"/patients/{w.patient.id}/billing-managers", {"proxy_id": str(newcomer.id)}


async def _remove(w: World) -> Request:
    proxy = await w.new_assigned_proxy()
    return "DELETE", f"/patients/{w.patient.id}/billing-managers/{proxy.id}", None


async def _list_managers(w: World) -> Request:
    return "GET", f"/patients/{w.patient.id}/billing-managers", None


OWNER_SIDE = {"admin", "owner", "assigned_proxy"}
ADMIN_ONLY = {"admin"}
PATIENT_OR_ADMIN = {"admin", "owner"}

# (name, prepare, event written on success/failure, who is allowed, success status)
ROUTES: list[tuple[str, Prepare, str, set[str], int]] = [
    ("checkout", _checkout, "billing.checkout.created", OWNER_SIDE, 201),
    ("read", _read, "billing.account.viewed", OWNER_SIDE, 200),
    ("cancel", _cancel, "billing.subscription.cancelled", OWNER_SIDE, 200),
    ("portal", _portal, "billing.portal.accessed", PATIENT_OR_ADMIN, 200),
    ("refund", _refund, "billing.refund.issued", ADMIN_ONLY, 201),
    ("free_grant", _free_grant, "billing.free_subscription.granted", ADMIN_ONLY, 201),
    ("override", _override, "billing.override.created", ADMIN_ONLY, 201),
    ("revoke", _revoke, "billing.override.revoked", ADMIN_ONLY, 200),
    ("assign_manager", _assign, "billing.manager.assigned", PATIENT_OR_ADMIN, 201),
    ("remove_manager", _remove, "billing.manager.removed", PATIENT_OR_ADMIN, 200),
    ("list_managers", _list_managers, "billing.manager.viewed", OWNER_SIDE, 200),
]

PROXY_EVENTS = {"billing.checkout.created": "billing.proxy.checkout.created",
                "billing.subscription.cancelled": "billing.proxy.subscription.cancelled",
                "billing.account.viewed": "billing.proxy.account.viewed"}


INTENT_EVENTS = {"billing.checkout.requested", "billing.proxy.checkout.requested",
                 "billing.subscription.cancel_requested",
                 "billing.proxy.subscription.cancel_requested",
                 "billing.override.requested", "billing.refund.requested"}
"""Two-phase routes also write the intent's row, before Stripe is asked (one per success)."""
WITH_INTENT = {"checkout", "refund", "override"}


def expected_status(allowed: set[str], persona: str, success: int) -> int:
    if persona == "anonymous":
        return 401
    return success if persona in allowed else 403


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize(("name", "prepare", "event", "allowed", "success"), ROUTES,
                         ids=[r[0] for r in ROUTES])
async def test_route_against_caller(world: World, client: httpx.AsyncClient, persona: str,
                                    name: str, prepare: Prepare, event: str, allowed: set[str],
                                    success: int) -> None:
    method, path, body = await prepare(world)
    before_rows = {row.id for row in await audit_rows(world.db)}
    before = await snapshot(world.db)

    headers = keyed(world.headers(persona)) if method == "POST" else world.headers(persona)
    response = await client.request(method, path, json=body, headers=headers)

    status = expected_status(allowed, persona, success)
    assert response.status_code == status, response.text
    new_rows = [row for row in await audit_rows(world.db) if row.id not in before_rows]
    intents = [row for row in new_rows if row.event_type in INTENT_EVENTS]
    new_rows = [row for row in new_rows if row.event_type not in INTENT_EVENTS]
    assert len(intents) == (1 if name in WITH_INTENT and status == success else 0), intents
    assert len(new_rows) == 1, [(r.event_type, r.outcome) for r in new_rows]
    row = new_rows[0]
    via_proxy = persona == "assigned_proxy" or (persona == "unassigned_proxy")
    assert row.event_type == (PROXY_EVENTS.get(event, event) if via_proxy else event)
    if status == success:
        assert row.outcome is Outcome.SUCCESS
        if method != "GET":
            assert await snapshot(world.db) != before
    else:
        assert row.outcome is Outcome.FAILURE
        assert row.reason and ("unauthorized" in row.reason or "forbidden" in row.reason
                               or "not_" in row.reason or "admin_required" in row.reason
                               or "missing_token" in row.reason)
        assert await snapshot(world.db) == before
    if persona == "anonymous":
        assert row.actor_user_id is None
    else:
        assert row.actor_user_id is not None
    if persona == "assigned_proxy" and status == success and name not in ("list_managers",):
        assert row.manager_assignment_id is not None
    assert row.client_ip == "203.0.113.7"
    assert row.request_id
