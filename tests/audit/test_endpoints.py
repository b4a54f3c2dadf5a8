"""The admin audit API: filters, keyset pages, one row, streamed export, and who may ask."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import timedelta

import httpx
import pytest

from billwatch.accounts.models import Role, User
from billwatch.audit.events import AuditEvent
from billwatch.db import Database, utcnow
from tests.audit.conftest import write_rows
from tests.support import Factory, audit_rows

URL = "/admin/audit-logs"


@pytest.fixture
async def admin(factory: Factory) -> User:
    return await factory.user(Role.ADMIN)


@pytest.fixture
async def written(db: Database) -> list[uuid.UUID]:
    return await write_rows(db, 24, per_transaction=6)


async def reads(db: Database) -> list[dict[str, object]]:
    return [row.data for row in await audit_rows(db, event_type=AuditEvent.AUDIT_READ.value)]


class TestList:
    async def test_pages_newest_first_without_repeats(
            self, client: httpx.AsyncClient, factory: Factory, admin: User, db: Database,
            written: list[uuid.UUID]) -> None:
        headers = factory.headers(admin)
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 10, "event_type": "billing.", **({"cursor": cursor} if cursor else {})}
            response = await client.get(URL, headers=headers, params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            seen += [item["id"] for item in body["items"]]
            times = [item["occurred_at"] for item in body["items"]]
            assert times == sorted(times, reverse=True)
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and sorted(seen) == sorted(str(i) for i in written)
        assert len(await reads(db)) == 3

    async def test_metadata_comes_back_decrypted(
            self, client: httpx.AsyncClient, factory: Factory, admin: User,
            written: list[uuid.UUID]) -> None:
        response = await client.get(URL, headers=factory.headers(admin),
                                     params={"event_type": "billing.refund.issued", "limit": 1})
        item = response.json()["items"][0]
        assert item["metadata"]["currency"] == "usd" and item["metadata_error"] is None
        assert item["seq"] is None and item["client_ip"] == "198.51.100.4"

    @pytest.mark.parametrize(("params", "expected"), [
        ({"event_type": "billing.proxy."}, 8),
        ({"event_type": "billing.payment.failed"}, 8),
        ({"event_type": "billing.nothing."}, 0),
        ({"outcome": "failure"}, 8),
        ({"actor_role": "admin", "resource_type": "transaction"}, 8),
        ({"owner_type": "patient"}, 24),
    ])
    async def test_filters(self, client: httpx.AsyncClient, factory: Factory, admin: User,
                           written: list[uuid.UUID], params: dict[str, str],
                           expected: int) -> None:
        response = await client.get(URL, headers=factory.headers(admin),
                                    params={**params, "limit": 100})
        assert response.status_code == 200
        assert len(response.json()["items"]) == expected

    async def test_filters_by_actor_owner_resource_and_time(
            self, client: httpx.AsyncClient, factory: Factory, admin: User, db: Database,
            written: list[uuid.UUID]) -> None:
        sample = (await audit_rows(db, id=written[4]))[0]
        headers = factory.headers(admin)
        for params in ({"actor_user_id": str(sample.actor_user_id)},
                       {"manager_assignment_id": str(sample.manager_assignment_id)},
                       {"owner_type": "patient", "owner_id": str(sample.owner_id)},
                       {"resource_type": "transaction", "resource_id": sample.resource_id}):
            items = (await client.get(URL, headers=headers, params=params)).json()["items"]
            assert str(sample.id) in [item["id"] for item in items], params
        later = (utcnow() + timedelta(minutes=1)).isoformat()
        assert (await client.get(URL, headers=headers,
                                 params={"from": later})).json()["items"] == []
        window = {"from": (sample.occurred_at - timedelta(microseconds=1)).isoformat(),
                  "to": (sample.occurred_at + timedelta(microseconds=1)).isoformat(),
                  "event_type": sample.event_type}
        items = (await client.get(URL, headers=headers, params=window)).json()["items"]
        assert str(sample.id) in [item["id"] for item in items]

    async def test_a_bad_cursor_is_422_and_audited(
            self, client: httpx.AsyncClient, factory: Factory, admin: User, db: Database) -> None:
        response = await client.get(URL, headers=factory.headers(admin), params={"cursor": "zz"})
        assert response.status_code == 422 and response.json()["error"] == "bad_cursor"
        [row] = await audit_rows(db, event_type=AuditEvent.AUDIT_READ.value)
        assert row.outcome == "failure" and "bad_cursor" in (row.reason or "")


class TestOneRow:
    async def test_reads_one_row_and_audits_it(
            self, client: httpx.AsyncClient, factory: Factory, admin: User, db: Database,
            written: list[uuid.UUID]) -> None:
        response = await client.get(f"{URL}/{written[0]}", headers=factory.headers(admin))
        assert response.status_code == 200 and response.json()["id"] == str(written[0])
        [row] = await audit_rows(db, event_type=AuditEvent.AUDIT_READ.value)
        assert (row.resource_type, row.resource_id, row.actor_user_id) == (
            "audit_log", str(written[0]), admin.id)

    async def test_unknown_row_is_404(self, client: httpx.AsyncClient, factory: Factory,
                                      admin: User, db: Database) -> None:
        missing = uuid.uuid4()
        response = await client.get(f"{URL}/{missing}", headers=factory.headers(admin))
        assert response.status_code == 404
        [row] = await audit_rows(db, event_type=AuditEvent.AUDIT_READ.value)
        assert row.outcome == "failure" and row.resource_id == str(missing)


class TestExport:
    async def test_jsonl_streams_every_matching_row(
            self, client: httpx.AsyncClient, factory: Factory, admin: User, db: Database,
            written: list[uuid.UUID]) -> None:
        async with client.stream("GET", f"{URL}/export", headers=factory.headers(admin),
                                 params={"format": "jsonl", "event_type": "billing."}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = [line async for line in response.aiter_lines() if line]
        items = [json.loads(line) for line in lines]
        assert sorted(item["id"] for item in items) == sorted(str(i) for i in written)
        assert all(item["metadata"]["currency"] == "usd" for item in items)
        assert [r["view"] for r in await reads(db)] == ["export"]

    async def test_csv_has_a_header_and_guards_formulas(
            self, client: httpx.AsyncClient, factory: Factory, admin: User, db: Database,
            written: list[uuid.UUID]) -> None:
        response = await client.get(f"{URL}/export", headers=factory.headers(admin),
                                    params={"format": "csv", "outcome": "failure"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert len(rows) == 8 and {row["reason"] for row in rows} == {"card_declined"}
        assert json.loads(rows[0]["metadata"])["currency"] == "usd"


class TestAccess:
    @pytest.mark.parametrize("role", [Role.PATIENT, Role.PROXY])
    @pytest.mark.parametrize("path", ["", "/export", pytest.param(f"/{uuid.uuid4()}", id="/row")])
    async def test_non_admins_get_403_and_one_denial_row(
            self, client: httpx.AsyncClient, factory: Factory, db: Database, role: Role,
            path: str) -> None:
        user = await factory.user(role)
        response = await client.get(URL + path, headers=factory.headers(user))
        assert response.status_code == 403
        rows = [r for r in await audit_rows(db) if r.event_type.startswith("audit.")]
        assert [(r.event_type, r.outcome, r.actor_user_id) for r in rows] == [
            ("audit.access_denied", "failure", user.id)]
        assert rows[0].client_ip == "203.0.113.7" and "admin" in (rows[0].reason or "")

    async def test_anonymous_gets_401_and_one_denial_row(
            self, client: httpx.AsyncClient, db: Database) -> None:
        response = await client.get(URL)
        assert response.status_code == 401
        rows = [r for r in await audit_rows(db) if r.event_type.startswith("audit.")]
        assert [(r.event_type, r.actor_user_id) for r in rows] == [("audit.access_denied", None)]
