"""Idempotency-Key on an ordinary (one-transaction) audited POST: replay, reuse, races, expiry."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from billwatch.accounts.models import Role
from billwatch.billing.models import BillingOverride
from billwatch.db import Database, utcnow
from billwatch.idempotency import IdempotencyKey, KeyState
from tests.support import Factory, People, audit_rows, count, keyed


def grant(people: People, **changes: Any) -> dict[str, Any]:
    return {**people.owner_body, "plan_code": "plus_monthly", "months": 2,
            "reason": "hardship", **changes}


async def grants(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(BillingOverride)) or 0)


class TestOrdinaryRoute:
    async def test_a_retry_replays_the_answer_without_a_second_grant(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = keyed(factory.headers(people.admin))
        first = await client.post("/admin/free-grants", headers=headers, json=grant(people))
        again = await client.post("/admin/free-grants", headers=headers, json=grant(people))
        assert first.status_code == again.status_code == 201, first.text
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert await grants(db) == 1
        assert len(await audit_rows(db, event_type="billing.free_subscription.granted")) == 1
        [key] = await self.keys(db)
        assert key.state is KeyState.COMPLETED and key.response_status == 201

    async def test_another_body_with_the_key_is_422_and_without_a_key_runs_each_time(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = keyed(factory.headers(people.admin))
        assert (await client.post("/admin/free-grants", headers=headers,
                                  json=grant(people))).status_code == 201
        reused = await client.post("/admin/free-grants", headers=headers,
                                   json=grant(people, months=3))
        assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
        plain = factory.headers(people.admin)
        for _ in range(2):
            other = await factory.user(Role.PATIENT)
            body = grant(people, owner_id=str(other.id))
            assert (await client.post("/admin/free-grants", headers=plain,
                                      json=body)).status_code == 201
        assert await grants(db) == 3

    async def test_a_failed_request_leaves_no_claim_so_the_retry_runs(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = keyed(factory.headers(people.admin))
        bad = await client.post("/admin/free-grants", headers=headers,
                                json=grant(people, plan_code="no_such_plan"))
        assert 400 <= bad.status_code < 500
        assert await self.keys(db) == []
        good = await client.post("/admin/free-grants", headers=headers, json=grant(people))
        assert good.status_code == 201, good.text

    async def test_concurrent_requests_with_one_key_grant_once(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = keyed(factory.headers(people.admin))
        responses = await asyncio.gather(*[
            client.post("/admin/free-grants", headers=headers, json=grant(people)) for _ in range(5)])
        assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert await grants(db) == 1

    async def test_after_24_hours_the_key_is_new_again(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = keyed(factory.headers(people.admin))
        assert (await client.post("/admin/free-grants", headers=headers,
                                  json=grant(people))).status_code == 201
        async with db.unit_of_work() as session:
            await session.execute(update(IdempotencyKey).values(
                created_at=utcnow() - timedelta(hours=25)))
        again = await client.post("/admin/free-grants", headers=headers, json=grant(people))
        assert "idempotent-replayed" not in again.headers  # it ran (and met the live grant)
        assert len(await audit_rows(db, event_type="billing.free_subscription.granted")) == 2
        assert await count(db, IdempotencyKey) == 1  # the fresh claim, or the expired one kept on failure

    @staticmethod
    async def keys(db: Database) -> list[IdempotencyKey]:
        async with db.sessionmaker() as session:
            return list((await session.scalars(select(IdempotencyKey))).all())
