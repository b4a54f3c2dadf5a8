"""billwatch's HTTP API as the demo's people use it: each call carries its user's bearer token.

Every billing operation of the simulated month goes through these calls to the running service,
so what the summary shows (audit rows, metrics, alerts) is what real traffic produces.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from billwatch.accounts.models import OwnerType


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        super().__init__(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        self.status_code = response.status_code


@dataclass(frozen=True, slots=True)
class Person:
    """A seeded user and the token they call the API with."""

    id: uuid.UUID
    email: str
    token: str


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose subscription it is: a patient or an organization, and who pays for it."""

    type: OwnerType
    id: uuid.UUID

    def body(self) -> dict[str, str]:
        return {"owner_type": self.type.value, "owner_id": str(self.id)}


class BillwatchApi:
    def __init__(self, base_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=60)

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, who: Person, body: dict[str, Any] | None = None,
                   *, expect: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {who.token}"}
        if method == "POST":  # one key per operation, as a careful client sends it
            headers["Idempotency-Key"] = str(uuid.uuid4())
        response = await self._http.request(method, path, json=body, headers=headers)
        if response.status_code != expect:
            raise ApiError(method, path, response)
        return response.json()

    async def post_event(self, body: str, signature: str) -> int:
        """Deliver one signed Stripe event to the webhook endpoint, as Stripe would."""
        response = await self._http.post(
            "/webhooks/stripe", content=body.encode(),
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
        return response.status_code

    async def get(self, path: str, who: Person | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {who.token}"} if who else {}
        return await self._http.get(path, headers=headers)

    # --- the operations ---------------------------------------------------------------------

    async def assign_manager(self, patient: Person, proxy: Person) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", f"/patients/{patient.id}/billing-managers", patient,
            {"proxy_id": str(proxy.id)}, expect=201)
        return result

    async def remove_manager(self, patient: Person, proxy: Person) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "DELETE", f"/patients/{patient.id}/billing-managers/{proxy.id}", patient)
        return result

    async def portal(self, who: Person, owner: Owner) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("POST", "/billing/portal", who, owner.body())
        return result

    async def checkout(self, who: Person, owner: Owner, plan_code: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/billing/checkout", who, {**owner.body(), "plan_code": plan_code}, expect=201)
        return result

    async def account(self, who: Person, owner: Owner) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "GET", f"/billing/owners/{owner.type.value}/{owner.id}", who)
        return result

    async def cancel(self, who: Person, subscription_id: str, *, at_period_end: bool,
                     reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", f"/billing/subscriptions/{subscription_id}/cancel", who,
            {"at_period_end": at_period_end, "reason": reason})
        return result

    async def refund(self, admin: Person, transaction_id: str, *, amount_cents: int | None,
                     reason: str, note: str) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason, "note": note}
        if amount_cents is not None:
            body["amount_cents"] = amount_cents
        result: dict[str, Any] = await self.call(
            "POST", f"/admin/transactions/{transaction_id}/refund", admin, body, expect=201)
        return result

    async def free_grant(self, admin: Person, owner: Owner, plan_code: str, months: int | None,
                         reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/admin/free-grants", admin,
            {**owner.body(), "plan_code": plan_code, "months": months, "reason": reason}, expect=201)
        return result

    async def create_override(self, admin: Person, owner: Owner, kind: str, reason: str,
                              percent_off: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/admin/overrides", admin,
            {**owner.body(), "kind": kind, "reason": reason, "percent_off": percent_off}, expect=201)
        return result

    async def revoke_override(self, admin: Person, override_id: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", f"/admin/overrides/{override_id}/revoke", admin, {"reason": reason})
        return result
