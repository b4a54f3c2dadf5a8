"""Billing managers: a patient names a proxy, who may then act for them, and only for them."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from billwatch.accounts.models import Role
from billwatch.audit.models import AuditLog
from billwatch.db import Database
from tests.support import Factory, audit_rows, snapshot


class TestAssignments:
    async def test_a_proxy_acts_while_assigned_and_not_after(
            self, client: httpx.AsyncClient, db: Database, factory: Factory) -> None:
        patient = await factory.user(Role.PATIENT)
        proxy = await factory.user(Role.PROXY)
        base = f"/patients/{patient.id}/billing-managers"
        assigned = await client.post(base, headers=factory.headers(patient),
                                     json={"proxy_id": str(proxy.id)})
        assert assigned.status_code == 201, assigned.text
        assignment_id = assigned.json()["id"]

        checkout = await client.post("/billing/checkout", headers=factory.headers(proxy), json={
            "owner_type": "patient", "owner_id": str(patient.id), "plan_code": "basic_monthly"})
        assert checkout.status_code == 201
        assert checkout.json()["manager_assignment_id"] == assignment_id
        read = await client.get(f"/billing/owners/patient/{patient.id}",
                                headers=factory.headers(proxy))
        assert read.status_code == 200
        portal = await client.post("/billing/portal", headers=factory.headers(proxy), json={
            "owner_type": "patient", "owner_id": str(patient.id)})
        assert portal.status_code == 403

        removed = await client.delete(f"{base}/{proxy.id}", headers=factory.headers(patient))
        assert removed.status_code == 200 and removed.json()["removed_at"] is not None
        after = await client.get(f"/billing/owners/patient/{patient.id}",
                                 headers=factory.headers(proxy))
        assert after.status_code == 403

        async with db.sessionmaker() as session:
            proxy_rows = (await session.scalars(select(AuditLog).where(
                AuditLog.owner_id == patient.id, AuditLog.manager_assignment_id.is_not(None))
                .order_by(AuditLog.occurred_at))).all()
        assert [r.event_type for r in proxy_rows] == [
            "billing.proxy.checkout.requested", "billing.proxy.checkout.created",
            "billing.proxy.account.viewed"]
        assert {str(r.manager_assignment_id) for r in proxy_rows} == {assignment_id}

    async def test_a_proxy_cannot_act_for_another_patient(
            self, client: httpx.AsyncClient, db: Database, factory: Factory) -> None:
        patient, other = await factory.user(Role.PATIENT), await factory.user(Role.PATIENT)
        proxy = await factory.user(Role.PROXY)
        await client.post(f"/patients/{patient.id}/billing-managers",
                          headers=factory.headers(patient), json={"proxy_id": str(proxy.id)})
        before = await snapshot(db)
        response = await client.post("/billing/checkout", headers=factory.headers(proxy), json={
            "owner_type": "patient", "owner_id": str(other.id), "plan_code": "basic_monthly"})
        assert response.status_code == 403
        assert response.json()["error"] == "not_billing_manager"
        assert await snapshot(db) == before
        [row] = await audit_rows(db, event_type="billing.proxy.checkout.created")
        assert row.owner_id == other.id and row.reason and "not_billing_manager" in row.reason

    async def test_only_proxies_once_each(self, client: httpx.AsyncClient, factory: Factory) -> None:
        patient = await factory.user(Role.PATIENT)
        proxy, not_proxy = await factory.user(Role.PROXY), await factory.user(Role.PATIENT)
        base = f"/patients/{patient.id}/billing-managers"
        headers = factory.headers(patient)
        wrong_role = await client.post(base, headers=headers, json={"proxy_id": str(not_proxy.id)})
        assert wrong_role.status_code == 422 and wrong_role.json()["error"] == "not_a_proxy"
        unknown = await client.post(base, headers=headers, json={"proxy_id": str(uuid.uuid4())})
        assert unknown.status_code == 404
        assert (await client.post(base, headers=headers, json={"proxy_id": str(proxy.id)})).status_code == 201
        twice = await client.post(base, headers=headers, json={"proxy_id": str(proxy.id)})
        assert twice.status_code == 409
        not_assigned = await client.delete(f"{base}/{not_proxy.id}", headers=headers)
        assert not_assigned.status_code == 404
        listed = await client.get(base, headers=headers)
        assert [a["proxy_id"] for a in listed.json()] == [str(proxy.id)]

    async def test_reassigning_after_removal_is_a_new_assignment(
            self, client: httpx.AsyncClient, factory: Factory) -> None:
        patient, proxy = await factory.user(Role.PATIENT), await factory.user(Role.PROXY)
        base = f"/patients/{patient.id}/billing-managers"
        headers = factory.headers(patient)
        first = await client.post(base, headers=headers, json={"proxy_id": str(proxy.id)})
        await client.delete(f"{base}/{proxy.id}", headers=headers)
        second = await client.post(base, headers=headers, json={"proxy_id": str(proxy.id)})
        assert second.status_code == 201 and second.json()["id"] != first.json()["id"]
