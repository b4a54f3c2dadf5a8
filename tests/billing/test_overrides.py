"""Free grants and overrides: admin decisions with a reason, each one audited and revocable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from billwatch.audit.events import Outcome
from billwatch.billing.models import Subscription, SubscriptionSource, SubscriptionStatus
from billwatch.billing.overrides import add_months
from billwatch.db import Database
from tests.support import Factory, People, audit_rows, paid_subscription, reload, snapshot


@pytest.mark.parametrize(("start", "months", "end"), [
    (datetime(2026, 1, 31, tzinfo=UTC), 1, datetime(2026, 2, 28, tzinfo=UTC)),
    (datetime(2028, 1, 31, tzinfo=UTC), 1, datetime(2028, 2, 29, tzinfo=UTC)),
    (datetime(2026, 11, 15, tzinfo=UTC), 3, datetime(2027, 2, 15, tzinfo=UTC)),
    (datetime(2026, 12, 1, tzinfo=UTC), 12, datetime(2027, 12, 1, tzinfo=UTC)),
])
def test_add_months_clamps_to_the_month_end(start: datetime, months: int, end: datetime) -> None:
    assert add_months(start, months) == end



class TestFreeGrants:
    async def test_for_n_months(self, client: httpx.AsyncClient, db: Database, factory: Factory,
                                people: People) -> None:
        response = await client.post("/admin/free-grants", headers=factory.headers(people.admin),
                                     json={**people.owner_body, "plan_code": "plus_monthly",
                                           "months": 6, "reason": "clinical trial participant"})
        assert response.status_code == 201, response.text
        grant = response.json()
        subscription = await reload(db, Subscription, grant["subscription_id"])
        assert subscription.source is SubscriptionSource.FREE_GRANT
        assert subscription.status is SubscriptionStatus.ACTIVE
        assert subscription.current_period_end is not None and subscription.current_period_start
        assert subscription.current_period_end == add_months(subscription.current_period_start, 6)
        [row] = await audit_rows(db)
        assert row.event_type == "billing.free_subscription.granted"
        assert row.data["months"] == 6 and row.data["reason"] == "clinical trial participant"

    async def test_with_no_end(self, client: httpx.AsyncClient, db: Database, factory: Factory,
                               people: People) -> None:
        response = await client.post("/admin/free-grants", headers=factory.headers(people.admin),
                                     json={**people.owner_body, "plan_code": "basic_monthly",
                                           "reason": "staff family"})
        assert response.status_code == 201
        assert response.json()["ends_at"] is None
        assert (await reload(db, Subscription, response.json()["subscription_id"])).current_period_end is None

    async def test_refused_while_a_paid_subscription_is_live(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await client.post("/admin/free-grants", headers=factory.headers(people.admin),
                                     json={**people.owner_body, "plan_code": "basic_monthly",
                                           "months": 1, "reason": "goodwill"})
        assert response.status_code == 409
        assert await snapshot(db) == before

    @pytest.mark.parametrize("change", [{"months": 0}, {"months": 121}, {"reason": "x"},
                                        {"plan_code": ""}, {"owner_type": "clinic"}])
    async def test_bad_input_is_422(self, client: httpx.AsyncClient, db: Database, factory: Factory,
                                    people: People, change: dict[str, object]) -> None:
        body = {**people.owner_body, "plan_code": "basic_monthly", "months": 1,
                "reason": "goodwill", **change}
        before = await snapshot(db)
        response = await client.post("/admin/free-grants", headers=factory.headers(people.admin),
                                     json=body)
        assert response.status_code == 422
        assert await snapshot(db) == before
        [row] = await audit_rows(db)
        assert row.outcome is Outcome.FAILURE and (row.reason or "").startswith("validation_error")


class TestOverrides:
    async def test_discount_then_revoke_then_revoke_again(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = factory.headers(people.admin)
        ends = (datetime.now(UTC) + timedelta(days=90)).isoformat()
        created = await client.post("/admin/overrides", headers=headers, json={
            **people.owner_body, "kind": "discount", "percent_off": 25, "ends_at": ends,
            "reason": "financial hardship"})
        assert created.status_code == 201, created.text
        override_id = created.json()["id"]
        revoked = await client.post(f"/admin/overrides/{override_id}/revoke", headers=headers,
                                    json={"reason": "hardship review closed"})
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        again = await client.post(f"/admin/overrides/{override_id}/revoke", headers=headers,
                                  json={"reason": "hardship review closed"})
        assert again.status_code == 409
        events = [(r.event_type, r.outcome) for r in await audit_rows(db)]
        assert events == [("billing.override.created", Outcome.SUCCESS),
                          ("billing.override.revoked", Outcome.SUCCESS),
                          ("billing.override.revoked", Outcome.FAILURE)]

    async def test_revoking_a_free_grant_ends_its_subscription(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = factory.headers(people.admin)
        grant = await client.post("/admin/free-grants", headers=headers, json={
            **people.owner_body, "plan_code": "basic_monthly", "reason": "pilot clinic"})
        revoked = await client.post(f"/admin/overrides/{grant.json()['id']}/revoke",
                                    headers=headers, json={"reason": "pilot over"})
        assert revoked.status_code == 200
        subscription = await reload(db, Subscription, grant.json()["subscription_id"])
        assert subscription.status is SubscriptionStatus.CANCELED
        row = (await audit_rows(db, event_type="billing.override.revoked"))[0]
        assert row.data["ended_subscription_id"] == str(subscription.id)

    @pytest.mark.parametrize(("change", "error"), [
        ({"kind": "discount"}, "percent_off_required"),
        ({"kind": "discount", "percent_off": 101}, "percent_off_required"),
        ({"kind": "payment_exemption", "percent_off": 5}, "percent_off_not_allowed"),
        ({"kind": "free_subscription"}, "use_free_grant"),
        ({"kind": "payment_exemption", "ends_at": "2020-01-01T00:00:00Z"}, "ends_at_in_past"),
        ({"kind": "payment_exemption", "ends_at": "2030-01-01T00:00:00"}, "validation_error"),
    ])
    async def test_inconsistent_overrides_are_422(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            change: dict[str, object], error: str) -> None:
        before = await snapshot(db)
        response = await client.post("/admin/overrides", headers=factory.headers(people.admin),
                                     json={**people.owner_body, "reason": "testing", **change})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == error
        assert await snapshot(db) == before

    async def test_unknown_override_is_404(self, client: httpx.AsyncClient, factory: Factory,
                                           people: People) -> None:
        response = await client.post(f"/admin/overrides/{uuid.uuid4()}/revoke",
                                     headers=factory.headers(people.admin), json={"reason": "gone"})
        assert response.status_code == 404
