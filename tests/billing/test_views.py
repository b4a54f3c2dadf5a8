"""Owners see what was decided, admins see why; no stored string keeps card data or a secret."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from sqlalchemy import text

from billwatch.accounts.models import Role
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.migrations import upgrade
from billwatch.redacted import clean
from tests.support import Factory, People, keyed, paid_subscription

CANARY_REASON = ("card 4242.4242.4242.4242 cvv is 123 key apikey_sk_live_4eC39HqLyjWDarjtT1zdp7 "
                 "hook whsec_abcdef0123456789 Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.sig")
LEAKS = ("4242.4242.4242", "123 key", "sk_live_", "whsec_", "eyJhbGciOi", "Bearer eyJ")
INTERNAL = {"reason", "revoke_reason", "note", "failure_code", "created_by_user_id",
            "revoked_by_user_id"}


def assert_clean(blob: str) -> None:
    for leak in LEAKS:
        assert leak not in blob, (leak, blob)


async def decided(client: httpx.AsyncClient, factory: Factory, people: People, db: Database,
                  settings: Settings) -> tuple[str, str]:
    """An exemption created and revoked, and a refund with a note, all with canary text."""
    admin = keyed(factory.headers(people.admin))
    _subscription, payment = await paid_subscription(db, settings, people.owner)  # what it applies to
    created = await client.post("/admin/overrides", headers=admin, json={
        **people.owner_body, "kind": "payment_exemption", "reason": CANARY_REASON})
    assert created.status_code == 201, created.text
    revoked = await client.post(f"/admin/overrides/{created.json()['id']}/revoke", headers=admin,
                                json={"reason": "revoked: " + CANARY_REASON})
    assert revoked.status_code == 200, revoked.text
    refund = await client.post(f"/admin/transactions/{payment.id}/refund", headers=admin, json={
        "amount_cents": 100, "reason": "service_issue", "note": CANARY_REASON})
    assert refund.status_code == 201, refund.text
    for response in (created, revoked, refund):  # admins see why, redacted
        assert_clean(response.text)
        assert "****.****.****.4242" in response.text
    return created.json()["id"], refund.json()["id"]


class TestOwnerAndAdminViews:
    async def test_owner_sees_the_decisions_without_the_internal_fields(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        override_id, refund_id = await decided(client, factory, people, db, settings)
        path = f"/billing/owners/patient/{people.patient.id}"
        owner_view = await client.get(path, headers=factory.headers(people.patient))
        assert owner_view.status_code == 200, owner_view.text
        account = owner_view.json()
        [override] = account["overrides"]
        assert override["id"] == override_id and override["revoked_at"] is not None
        assert refund_id in {t["id"] for t in account["transactions"]}
        for row in account["overrides"] + account["transactions"]:
            assert not INTERNAL & set(row), row
        assert str(people.admin.id) not in owner_view.text
        assert "4242" not in owner_view.text and "cvv" not in owner_view.text

        admin_view = await client.get(path, headers=factory.headers(people.admin))
        assert admin_view.status_code == 200
        admin_account = admin_view.json()
        [admin_override] = admin_account["overrides"]
        assert admin_override["reason"] == clean(CANARY_REASON)
        assert admin_override["revoke_reason"].startswith("revoked: card ****")
        assert admin_override["created_by_user_id"] == str(people.admin.id)
        [refund] = [t for t in admin_account["transactions"] if t["id"] == refund_id]
        assert refund["reason"] == "service_issue" and refund["note"] == clean(CANARY_REASON)
        assert_clean(admin_view.text)

    async def test_an_organization_member_sees_the_owner_view(
            self, client: httpx.AsyncClient, db: Database, factory: Factory) -> None:
        member = await factory.user(Role.PATIENT)
        admin = await factory.user(Role.ADMIN)
        organization = await factory.organization(members=[member])
        created = await client.post("/admin/free-grants", headers=factory.headers(admin), json={
            "owner_type": "organization", "owner_id": str(organization.id),
            "plan_code": "clinic_monthly", "reason": "board decision " + CANARY_REASON})
        assert created.status_code == 201, created.text
        view = await client.get(f"/billing/owners/organization/{organization.id}",
                                headers=factory.headers(member))
        assert view.status_code == 200, view.text
        [override] = view.json()["overrides"]
        assert not INTERNAL & set(override) and "board decision" not in view.text


class TestStoredText:
    async def test_free_text_is_redacted_at_rest(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        await decided(client, factory, people, db, settings)
        async with db.engine.connect() as connection:  # raw SQL: no column type in the way
            reasons = (await connection.execute(text(
                "SELECT reason, revoke_reason FROM billing_overrides"))).all()
            notes = (await connection.execute(text("SELECT note FROM transactions"))).all()
        stored = json.dumps([list(r) for r in reasons] + [list(n) for n in notes])
        assert "****.****.****.4242" in stored and "[REDACTED]" in stored
        assert_clean(stored)

    async def test_rows_stored_raw_before_are_redacted_when_read(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        created = await client.post("/admin/free-grants", headers=factory.headers(people.admin), json={
            **people.owner_body, "plan_code": "basic_monthly", "reason": "placeholder"})
        async with db.engine.begin() as connection:  # as an older release would have stored it
            await connection.execute(text("UPDATE billing_overrides SET reason = :r"),
                                     {"r": CANARY_REASON})
        view = await client.get(f"/billing/owners/patient/{people.patient.id}",
                                headers=factory.headers(people.admin))
        [override] = view.json()["overrides"]
        assert override["id"] == created.json()["id"] and override["reason"] == clean(CANARY_REASON)
        assert_clean(view.text)


class TestMigration:
    async def test_text_stored_before_is_redacted_in_place(self, fresh_url: str) -> None:
        await asyncio.to_thread(upgrade, fresh_url, "0001_foundation")
        db = Database(fresh_url)
        try:
            user_id = uuid.uuid4()
            ids = {"user": user_id.hex if db.dialect == "sqlite" else str(user_id)}
            cast = "CAST(:{} AS uuid)" if db.dialect == "postgresql" else ":{}"
            async with db.engine.begin() as connection:
                await connection.execute(text(
                    "INSERT INTO users (id, email, name, role, created_at) VALUES "
                    f"({cast.format('user')}, 'old@example.test', :name, 'admin', CURRENT_TIMESTAMP)"),
                    {**ids, "name": "Ada 4242 4242 4242 4242"})
                await connection.execute(text(
                    "INSERT INTO billing_overrides (id, owner_type, owner_id, kind, starts_at, reason,"
                    f" created_by_user_id, created_at) VALUES ({cast.format('id')}, 'patient', "
                    f"{cast.format('user')}, 'payment_exemption', CURRENT_TIMESTAMP, :reason, "
                    f"{cast.format('user')}, CURRENT_TIMESTAMP)"),
                    {**ids, "id": uuid.uuid4().hex, "reason": CANARY_REASON})
            await asyncio.to_thread(upgrade, fresh_url)
            async with db.engine.connect() as connection:
                [(name,)] = (await connection.execute(text("SELECT name FROM users"))).all()
                [(reason,)] = (await connection.execute(text(
                    "SELECT reason FROM billing_overrides"))).all()
            assert name == "Ada **** **** **** 4242"
            assert reason == clean(CANARY_REASON)
        finally:
            await db.dispose()
