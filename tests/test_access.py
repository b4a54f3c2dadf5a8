"""Owner access: each access dependency leaves the failure row its context when the route fails.

A failure row says who acted (and through which assignment), on whose billing and on what. The
dependencies that load, authorise and name a route's target record that context as they learn
it, so the row is as complete as the request got: a stranger's 403 names the owner it was
refused, an unknown subscription's 404 names the subscription, a Stripe failure after a proxy
was allowed carries the proxy's assignment. A request whose input is invalid names nothing it
did not validate.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import billwatch
from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import OwnerType, Role, User
from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.audit.models import AuditLog
from billwatch.billing.models import Subscription
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.managers import service as managers
from tests.support import Factory, HangingStripe, audit_rows, keyed, paid_subscription


@dataclass
class World:
    db: Database
    settings: Settings
    factory: Factory
    admin: User
    patient: User
    proxy: User
    """Assigned to ``patient``."""
    stranger: User
    """A patient with no say over ``patient``'s billing."""
    assignment_id: uuid.UUID

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef(OwnerType.PATIENT, self.patient.id)

    def as_(self, who: str) -> dict[str, str]:
        user = {"admin": self.admin, "patient": self.patient, "proxy": self.proxy,
                "stranger": self.stranger}[who]
        return self.factory.headers(user)

    def user_id(self, who: str) -> uuid.UUID:
        return {"admin": self.admin, "patient": self.patient, "proxy": self.proxy,
                "stranger": self.stranger}[who].id

    async def unpayable_subscription(self) -> Subscription:
        """A live subscription whose Stripe id Stripe does not know: cancelling it fails there."""
        subscription, _ = await paid_subscription(self.db, self.settings, self.owner)
        async with self.db.unit_of_work() as session:
            stored = await session.get(Subscription, subscription.id)
            assert stored is not None
            stored.stripe_subscription_id = "sub_doesnotexistatstripe"
        return subscription


@pytest.fixture
async def world(db: Database, settings: Settings, factory: Factory) -> World:
    patient, proxy = await factory.user(Role.PATIENT), await factory.user(Role.PROXY)
    async with db.unit_of_work() as session:
        assignment = await managers.assign_manager(
            session, actor=Actor(patient.id, Role.PATIENT), patient_id=patient.id,
            proxy_id=proxy.id)
    return World(db, settings, factory, admin=await factory.user(Role.ADMIN), patient=patient,
                 proxy=proxy, stranger=await factory.user(Role.PATIENT),
                 assignment_id=assignment.id)


Call = tuple[str, str, dict[str, object] | None]
Prepare = Callable[[World], Awaitable[Call]]
UNKNOWN = uuid.UUID("00000000-0000-4000-8000-00000000abcd")


@dataclass(frozen=True)
class Expected:
    """The failure row a refused or failed request leaves."""

    status: int
    event: str
    owner: str | None = None
    """``"patient"`` for the world's patient, ``"unknown"`` for :data:`UNKNOWN`, or none."""
    resource: tuple[str, str] | None = None
    """(type, ``"unknown"`` or ``"target"``): the resource id is :data:`UNKNOWN` or the target's."""
    via_assignment: bool = False


@dataclass(frozen=True)
class Case:
    name: str
    who: str
    prepare: Callable[[World], Awaitable[tuple[Call, str | None]]]
    """The request, and the id that ``"target"`` stands for in :attr:`Expected.resource`."""
    expected: Expected


def _owner_body(w: World) -> dict[str, object]:
    return {"owner_type": "patient", "owner_id": str(w.patient.id)}


async def checkout(w: World) -> tuple[Call, str | None]:
    return ("POST", "/billing/checkout", {**_owner_body(w), "plan_code": "basic_monthly"}), None


async def checkout_unknown_owner(w: World) -> tuple[Call, str | None]:
    return ("POST", "/billing/checkout", {"owner_type": "patient", "owner_id": str(UNKNOWN),
                                          "plan_code": "basic_monthly"}), None


async def checkout_without_plan(w: World) -> tuple[Call, str | None]:
    return ("POST", "/billing/checkout", _owner_body(w)), None


async def portal(w: World) -> tuple[Call, str | None]:
    return ("POST", "/billing/portal", _owner_body(w)), None


async def read_account(w: World) -> tuple[Call, str | None]:
    return ("GET", f"/billing/owners/patient/{w.patient.id}", None), None


async def read_unknown_account(w: World) -> tuple[Call, str | None]:
    return ("GET", f"/billing/owners/patient/{UNKNOWN}", None), None


async def cancel(w: World) -> tuple[Call, str | None]:
    subscription = await w.unpayable_subscription()
    return ("POST", f"/billing/subscriptions/{subscription.id}/cancel",
            {"at_period_end": False}), str(subscription.id)


async def cancel_unknown(w: World) -> tuple[Call, str | None]:
    return ("POST", f"/billing/subscriptions/{UNKNOWN}/cancel", {"at_period_end": False}), None


async def cancel_with_bad_body(w: World) -> tuple[Call, str | None]:
    subscription = await w.unpayable_subscription()
    return ("POST", f"/billing/subscriptions/{subscription.id}/cancel",
            {"at_period_end": "later"}), None


async def cancel_unknown_with_bad_body(w: World) -> tuple[Call, str | None]:
    return ("POST", f"/billing/subscriptions/{UNKNOWN}/cancel", {"at_period_end": "later"}), None


async def refund(w: World) -> tuple[Call, str | None]:
    _, payment = await paid_subscription(w.db, w.settings, w.owner)
    return ("POST", f"/admin/transactions/{payment.id}/refund",
            {"amount_cents": 500, "reason": "requested_by_customer"}), str(payment.id)


async def refund_unknown(w: World) -> tuple[Call, str | None]:
    return ("POST", f"/admin/transactions/{UNKNOWN}/refund",
            {"amount_cents": 500, "reason": "requested_by_customer"}), None


async def free_grant(w: World) -> tuple[Call, str | None]:
    return ("POST", "/admin/free-grants", {**_owner_body(w), "plan_code": "plus_monthly",
                                           "months": 2, "reason": "hardship"}), None


async def free_grant_unknown_owner(w: World) -> tuple[Call, str | None]:
    return ("POST", "/admin/free-grants", {"owner_type": "patient", "owner_id": str(UNKNOWN),
                                           "plan_code": "plus_monthly", "months": 2,
                                           "reason": "hardship"}), None


async def override_for_nothing(w: World) -> tuple[Call, str | None]:
    return ("POST", "/admin/overrides", {**_owner_body(w), "kind": "discount", "percent_off": 20,
                                         "reason": "loyalty"}), None


async def revoke_unknown(w: World) -> tuple[Call, str | None]:
    return ("POST", f"/admin/overrides/{UNKNOWN}/revoke", {"reason": "ended"}), None


async def acknowledge_unknown(w: World) -> tuple[Call, str | None]:
    return ("POST", f"/admin/alerts/{UNKNOWN}/acknowledge", {"note": "seen"}), None


async def audit_row_unknown(w: World) -> tuple[Call, str | None]:
    return ("GET", f"/admin/audit-logs/{UNKNOWN}", None), None


async def assign(w: World) -> tuple[Call, str | None]:
    newcomer = await w.factory.user(Role.PROXY)
    return ("POST", f"/patients/{w.patient.id}/billing-managers",
            {"proxy_id": str(newcomer.id)}), None


async def assign_with_bad_body(w: World) -> tuple[Call, str | None]:
    return ("POST", f"/patients/{w.patient.id}/billing-managers", {"proxy_id": "nobody"}), None


async def remove(w: World) -> tuple[Call, str | None]:
    return ("DELETE", f"/patients/{w.patient.id}/billing-managers/{w.proxy.id}", None), None


async def remove_with_bad_proxy_id(w: World) -> tuple[Call, str | None]:
    return ("DELETE", f"/patients/{w.patient.id}/billing-managers/nobody", None), None


async def list_managers(w: World) -> tuple[Call, str | None]:
    return ("GET", f"/patients/{w.patient.id}/billing-managers", None), None


CHECKOUT, CANCEL = "billing.checkout.created", "billing.subscription.cancelled"
CASES = [
    # owner named in the body, authorised for a purpose
    Case("checkout_stranger_403", "stranger", checkout, Expected(403, CHECKOUT, owner="patient")),
    Case("checkout_unknown_owner_404", "admin", checkout_unknown_owner,
         Expected(404, CHECKOUT, owner="unknown")),
    Case("checkout_invalid_body_names_no_owner", "patient", checkout_without_plan,
         Expected(422, CHECKOUT)),
    Case("checkout_stranger_invalid_body_is_422_not_403", "stranger", checkout_without_plan,
         Expected(422, CHECKOUT)),
    Case("portal_proxy_403", "proxy", portal,
         Expected(403, "billing.portal.accessed", owner="patient")),
    # owner named in the path
    Case("read_stranger_403", "stranger", read_account,
         Expected(403, "billing.account.viewed", owner="patient")),
    Case("read_unknown_owner_404", "patient", read_unknown_account,
         Expected(404, "billing.account.viewed", owner="unknown")),
    # a subscription, loaded to find its owner
    Case("cancel_unknown_404", "patient", cancel_unknown,
         Expected(404, CANCEL, resource=("subscription", "unknown"))),
    Case("cancel_stranger_403", "stranger", cancel,
         Expected(403, CANCEL, owner="patient", resource=("subscription", "target"))),
    Case("cancel_by_proxy_stripe_fails_502", "proxy", cancel,
         Expected(502, "billing.proxy.subscription.cancelled", owner="patient",
                  resource=("subscription", "target"), via_assignment=True)),
    Case("cancel_invalid_body_names_nothing", "patient", cancel_with_bad_body,
         Expected(422, CANCEL)),
    Case("cancel_unknown_invalid_body_is_422_not_404", "patient", cancel_unknown_with_bad_body,
         Expected(422, CANCEL)),
    # admin routes: the target is named once the caller is known to be an admin
    Case("refund_non_admin_403", "patient", refund, Expected(403, "billing.refund.issued")),
    Case("refund_unknown_404", "admin", refund_unknown,
         Expected(404, "billing.refund.issued", resource=("transaction", "unknown"))),
    Case("free_grant_non_admin_403", "proxy", free_grant,
         Expected(403, "billing.free_subscription.granted")),
    Case("free_grant_unknown_owner_404", "admin", free_grant_unknown_owner,
         Expected(404, "billing.free_subscription.granted", owner="unknown")),
    Case("override_without_subscription_fails", "admin", override_for_nothing,
         Expected(409, "billing.override.created", owner="patient")),
    Case("revoke_unknown_404", "admin", revoke_unknown,
         Expected(404, "billing.override.revoked", resource=("billing_override", "unknown"))),
    Case("acknowledge_unknown_404", "admin", acknowledge_unknown,
         Expected(404, "alerts.acknowledged", resource=("alert", "unknown"))),
    Case("audit_row_unknown_404", "admin", audit_row_unknown,
         Expected(404, "audit.read", resource=("audit_log", "unknown"))),
    Case("audit_row_non_admin_denied", "patient", audit_row_unknown,
         Expected(403, "audit.access_denied")),
    # billing managers: the patient is the owner
    Case("assign_by_stranger_403", "stranger", assign,
         Expected(403, "billing.manager.assigned", owner="patient")),
    Case("assign_invalid_body_names_no_owner", "patient", assign_with_bad_body,
         Expected(422, "billing.manager.assigned")),
    Case("remove_by_proxy_403", "proxy", remove,
         Expected(403, "billing.manager.removed", owner="patient")),
    Case("remove_invalid_proxy_id_names_no_owner", "patient", remove_with_bad_proxy_id,
         Expected(422, "billing.manager.removed")),
    Case("list_managers_stranger_403", "stranger", list_managers,
         Expected(403, "billing.manager.viewed", owner="patient")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_failure_row_carries_what_access_learned(world: World, client: httpx.AsyncClient,
                                                      case: Case) -> None:
    (method, path, body), target = await case.prepare(world)
    before = {row.id for row in await audit_rows(world.db)}
    headers = world.as_(case.who)
    response = await client.request(method, path, json=body,
                                    headers=keyed(headers) if method == "POST" else headers)

    expected = case.expected
    assert response.status_code == expected.status, response.text
    failures = [row for row in await audit_rows(world.db, outcome=Outcome.FAILURE)
                if row.id not in before]
    assert [row.event_type for row in failures] == [expected.event], failures
    row: AuditLog = failures[0]
    assert row.actor_user_id == world.user_id(case.who)
    owners = {"patient": (OwnerType.PATIENT, world.patient.id),
              "unknown": (OwnerType.PATIENT, UNKNOWN), None: (None, None)}
    assert (row.owner_type, row.owner_id) == owners[expected.owner]
    if expected.resource is None:
        assert (row.resource_type, row.resource_id) == (None, None)
    else:
        kind, which = expected.resource
        assert (row.resource_type, row.resource_id) == (
            kind, str(UNKNOWN) if which == "unknown" else target)
    assert row.manager_assignment_id == (world.assignment_id if expected.via_assignment
                                         else None)


async def test_refund_without_key_names_no_transaction(world: World,
                                                       client: httpx.AsyncClient) -> None:
    """The key is checked before the target is named, so its 400 row names no transaction."""
    response = await client.post(f"/admin/transactions/{UNKNOWN}/refund",
                                 headers=world.as_("admin"),
                                 json={"amount_cents": 500, "reason": "requested_by_customer"})
    assert response.status_code == 400, response.text
    [row] = await audit_rows(world.db, outcome=Outcome.FAILURE)
    assert row.event_type == "billing.refund.issued" and row.actor_user_id == world.admin.id
    assert (row.resource_type, row.owner_id) == (None, None)


async def test_an_anonymous_refusal_names_nobody(world: World, client: httpx.AsyncClient) -> None:
    response = await client.get(f"/billing/owners/patient/{world.patient.id}")
    assert response.status_code == 401
    assert [row for row in await audit_rows(world.db, outcome=Outcome.FAILURE)
            if row.actor_user_id is not None] == []


async def proxy_checkout(w: World) -> tuple[str, dict[str, object]]:
    return "/billing/checkout", {**_owner_body(w), "plan_code": "basic_monthly"}


async def proxy_cancel(w: World) -> tuple[str, dict[str, object]]:
    subscription, _ = await paid_subscription(w.db, w.settings, w.owner)
    return f"/billing/subscriptions/{subscription.id}/cancel", {"at_period_end": False}


@pytest.mark.parametrize("prepare", [proxy_checkout, proxy_cancel], ids=["checkout", "cancel"])
async def test_a_phased_route_holds_no_connection_while_stripe_answers(
        world: World, hanging: HangingStripe,
        prepare: Callable[[World], Awaitable[tuple[str, dict[str, object]]]]) -> None:
    """The proxy is authorised (a read of its assignment) and that transaction is closed first."""
    path, body = await prepare(world)
    stuck = world.settings.model_copy(update={"stripe_api_base": await hanging.start()})
    app = create_app(stuck, database=world.db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as http:
        call = asyncio.create_task(http.post(path, json=body, headers=world.as_("proxy")))
        try:
            await asyncio.wait_for(hanging.accepted.wait(), timeout=30)
            assert world.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call


PACKAGE = Path(billwatch.__file__).parent
ROUTE_MODULES = [*sorted(PACKAGE.glob("*/endpoints.py")), PACKAGE / "console" / "pages.py"]


@pytest.mark.parametrize("module", ROUTE_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_route_module_writes_request_state(module: Path) -> None:
    """The failure context has one writer, the access module; a route module only depends on it."""
    tree = ast.parse(module.read_text())
    writes = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Attribute) and node.value.attr == "state"]
    assert writes == [], f"{module.name} sets request.state at lines {writes}"
