"""Free grants and overrides: admin decisions with a reason, each one audited and revocable."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import stripe
from sqlalchemy import select

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.audit.events import Outcome
from billwatch.billing.models import (
    BillingOverride,
    OverrideState,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.billing.overrides import add_months, coupon_id
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import daily_metrics
from billwatch.monitoring.gauges import query_snapshot
from billwatch.payments.gateway import PaymentsGateway
from billwatch.redaction import redact_text
from tests.billing.helpers import create_override, standin_renewal
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


async def revoke(client: httpx.AsyncClient, factory: Factory, people: People,
                 override_id: str) -> httpx.Response:
    return await client.post(f"/admin/overrides/{override_id}/revoke",
                             headers=factory.headers(people.admin),
                             json={"reason": "hardship review closed"})


async def charges_at_peer(settings: Settings, customer_id: str) -> list[int]:
    listed = await PaymentsGateway(settings).client.v1.charges.list_async(
        params={"customer": customer_id})
    return sorted(int(charge.amount) for charge in listed.data)


class TestDiscountAtStripe:
    async def test_percent_discount_changes_what_the_peer_charges_until_revoked(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        gateway = PaymentsGateway(settings)
        created = await create_override(client, factory, people, "discount", percent_off=25)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["state"] == "active" and body["subscription_id"] == str(subscription.id)
        override = await reload(db, BillingOverride, body["id"])
        assert override.stripe_coupon_id == f"billwatch_override_{uuid.UUID(body['id'])}"
        coupon = await gateway.client.v1.coupons.retrieve_async(override.stripe_coupon_id)
        assert coupon.percent_off == 25

        renewal = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert (renewal.amount_due_cents, renewal.amount_paid_cents) == (1125, 1125)
        assert renewal.charge_id is not None
        charge = await gateway.client.v1.charges.retrieve_async(renewal.charge_id)
        assert (charge.amount, charge.status) == (1125, "succeeded")

        revoked = await revoke(client, factory, people, body["id"])
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"]
        with pytest.raises(stripe.InvalidRequestError):
            await gateway.client.v1.coupons.retrieve_async(override.stripe_coupon_id)
        after = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert after.amount_paid_cents == 1500
        assert await charges_at_peer(settings, str(subscription.stripe_customer_id)) == [
            1125, 1500, 1500]

        rows = [(r.event_type, r.outcome) for r in await audit_rows(db)]
        assert rows == [("billing.override.requested", Outcome.SUCCESS),
                        ("billing.override.created", Outcome.SUCCESS),
                        ("billing.override.revoked", Outcome.SUCCESS)]
        applied = (await audit_rows(db, event_type="billing.override.created"))[0]
        assert applied.data["stripe_coupon_id"] == override.stripe_coupon_id
        assert applied.data["stripe_discount_id"] == override.stripe_discount_id
        assert applied.data["percent_off"] == 25
        assert applied.stripe_subscription_id == subscription.stripe_subscription_id

    async def test_amount_off_discount(self, client: httpx.AsyncClient, db: Database,
                                       factory: Factory, people: People,
                                       settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        created = await create_override(client, factory, people, "discount", amount_off_cents=300)
        assert created.status_code == 201, created.text
        assert created.json()["currency"] == "usd"
        renewal = await standin_renewal(PaymentsGateway(settings).client,
                                       subscription.stripe_subscription_id)
        assert renewal.amount_paid_cents == 1200

    async def test_a_second_discount_waits_for_a_revoke(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        await paid_subscription(db, settings, people.owner)
        first = await create_override(client, factory, people, "discount", percent_off=10)
        assert first.status_code == 201
        second = await create_override(client, factory, people, "discount", percent_off=20)
        assert second.status_code == 409 and second.json()["error"] == "override_exists"
        await revoke(client, factory, people, first.json()["id"])
        third = await create_override(client, factory, people, "discount", percent_off=20)
        assert third.status_code == 201, third.text

    async def test_concurrent_creates_give_one_override(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        await paid_subscription(db, settings, people.owner)
        answers = await asyncio.gather(*(create_override(client, factory, people, "discount",
                                                         percent_off=10) for _ in range(3)))
        assert sorted(a.status_code for a in answers) == [201, 409, 409]
        assert {a.json().get("error") for a in answers if a.status_code == 409} == {
            "override_exists"}
        async with db.sessionmaker() as session:
            assert len((await session.scalars(select(BillingOverride))).all()) == 1

    async def test_without_a_stripe_subscription_nothing_is_stored(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        before = await snapshot(db)
        response = await create_override(client, factory, people, "discount", percent_off=10)
        assert response.status_code == 409
        assert response.json()["error"] == "no_stripe_subscription"
        assert await snapshot(db) == before

    async def test_a_stripe_refusal_leaves_a_failed_intent_and_changes_nothing(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        async with db.unit_of_work() as session:  # a subscription the peer does not know
            session.add(Subscription(
                id=uuid.uuid4(), owner_type=people.owner.type, owner_id=people.owner.id,
                plan_code="basic_monthly", status=SubscriptionStatus.ACTIVE,
                stripe_subscription_id="sub_unknown_to_the_peer", stripe_customer_id="cus_x"))
        response = await create_override(client, factory, people, "payment_exemption")
        assert response.status_code == 502, response.text
        async with db.sessionmaker() as session:
            [override] = (await session.scalars(select(BillingOverride))).all()
        assert override.state is OverrideState.FAILED and override.applied_at is None
        assert override.failure_code and override.failure_code.startswith("stripe_")
        rows = [(r.event_type, r.outcome) for r in await audit_rows(db)]
        assert rows == [("billing.override.requested", Outcome.SUCCESS),
                        ("billing.override.created", Outcome.FAILURE)]


class TestPaymentExemption:
    async def test_pauses_collection_until_revoked(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        gateway = PaymentsGateway(settings)
        created = await create_override(client, factory, people, "payment_exemption",
                                        reason="inpatient stay")
        assert created.status_code == 201, created.text
        paused = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert paused.collection_paused == "void" and paused.amount_paid_cents == 0
        customer = str(subscription.stripe_customer_id)
        assert await charges_at_peer(settings, customer) == [1500]  # the first invoice only
        row = (await audit_rows(db, event_type="billing.override.created"))[0]
        assert row.data["pause_behavior"] == "void"

        revoked = await revoke(client, factory, people, created.json()["id"])
        assert revoked.status_code == 200, revoked.text
        resumed = await standin_renewal(gateway.client, subscription.stripe_subscription_id)
        assert resumed.collection_paused is None and resumed.amount_paid_cents == 1500
        assert await charges_at_peer(settings, customer) == [1500, 1500]


class TestRevoke:
    async def test_two_concurrent_revokes_one_succeeds_one_conflicts(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        await paid_subscription(db, settings, people.owner)
        created = await create_override(client, factory, people, "discount", percent_off=25)
        override_id = created.json()["id"]
        first, second = await asyncio.gather(revoke(client, factory, people, override_id),
                                             revoke(client, factory, people, override_id))
        assert sorted([first.status_code, second.status_code]) == [200, 409]
        loser = first if first.status_code == 409 else second
        assert loser.json()["error"] in {"revoke_in_progress", "already_revoked"}
        rows = [(r.event_type, r.outcome)
                for r in await audit_rows(db, event_type="billing.override.revoked")]
        assert sorted(rows) == [("billing.override.revoked", Outcome.FAILURE),
                                ("billing.override.revoked", Outcome.SUCCESS)]
        assert (await reload(db, BillingOverride, override_id)).state is OverrideState.REVOKED

    async def test_revoke_then_revoke_again(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        await paid_subscription(db, settings, people.owner)
        ends = (datetime.now(UTC) + timedelta(days=90)).isoformat()
        created = await create_override(client, factory, people, "discount", percent_off=25, ends_at=ends)
        assert created.status_code == 201, created.text
        assert (await revoke(client, factory, people, created.json()["id"])).status_code == 200
        again = await revoke(client, factory, people, created.json()["id"])
        assert again.status_code == 409 and again.json()["error"] == "already_revoked"

    async def test_revoking_a_free_grant_ends_its_subscription(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        headers = factory.headers(people.admin)
        grant = await client.post("/admin/free-grants", headers=headers, json={
            **people.owner_body, "plan_code": "basic_monthly", "reason": "pilot clinic"})
        revoked = await client.post(f"/admin/overrides/{grant.json()['id']}/revoke",
                                    headers=headers, json={"reason": "pilot over"})
        assert revoked.status_code == 200
        assert revoked.json()["state"] == "revoked"
        subscription = await reload(db, Subscription, grant.json()["subscription_id"])
        assert subscription.status is SubscriptionStatus.CANCELED
        row = (await audit_rows(db, event_type="billing.override.revoked"))[0]
        assert row.data["ended_subscription_id"] == str(subscription.id)

    async def test_unknown_override_is_404(self, client: httpx.AsyncClient, factory: Factory,
                                           people: People) -> None:
        response = await client.post(f"/admin/overrides/{uuid.uuid4()}/revoke",
                                     headers=factory.headers(people.admin), json={"reason": "gone"})
        assert response.status_code == 404


class TestValidation:
    @pytest.mark.parametrize(("change", "error"), [
        ({"kind": "discount"}, "percent_off_required"),
        ({"kind": "discount", "percent_off": 101}, "percent_off_required"),
        ({"kind": "discount", "percent_off": 10, "amount_off_cents": 100}, "discount_ambiguous"),
        ({"kind": "discount", "percent_off": 10, "plan_code": "basic_monthly"},
         "plan_code_not_allowed"),
        ({"kind": "payment_exemption", "percent_off": 5}, "percent_off_not_allowed"),
        ({"kind": "payment_exemption", "amount_off_cents": 5}, "percent_off_not_allowed"),
        ({"kind": "free_subscription"}, "use_free_grant"),
        ({"kind": "payment_exemption", "ends_at": "2020-01-01T00:00:00Z"}, "ends_at_in_past"),
        ({"kind": "payment_exemption", "ends_at": "2030-01-01T00:00:00"}, "validation_error"),
        ({"kind": "discount", "amount_off_cents": 0}, "validation_error"),
    ])
    async def test_inconsistent_overrides_are_422(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings, change: dict[str, object], error: str) -> None:
        await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await client.post("/admin/overrides", headers=factory.headers(people.admin),
                                     json={**people.owner_body, "reason": "testing", **change})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == error
        assert await snapshot(db) == before


class TestMrrCountsWhatIsCharged:
    async def test_job_and_gauge_agree_on_discounted_and_exempted_subscriptions(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        yearly_owner = await factory.user(Role.PATIENT)
        exempt_owner = await factory.user(Role.PATIENT)
        owners = {"monthly": people.owner,
                  "yearly": OwnerRef(OwnerType.PATIENT, yearly_owner.id),
                  "exempt": OwnerRef(OwnerType.PATIENT, exempt_owner.id)}
        await paid_subscription(db, settings, owners["monthly"], plan_code="basic_monthly")
        await paid_subscription(db, settings, owners["yearly"], plan_code="plus_yearly")
        await paid_subscription(db, settings, owners["exempt"], plan_code="basic_monthly")
        headers = factory.headers(people.admin)
        terms = {"monthly": {"kind": "discount", "percent_off": 25},
                 "yearly": {"kind": "discount", "amount_off_cents": 1000},
                 "exempt": {"kind": "payment_exemption"}}
        created = {}
        for name, owner in owners.items():
            response = await client.post("/admin/overrides", headers=headers, json={
                "owner_type": "patient", "owner_id": str(owner.id), "reason": "programme",
                **terms[name]})
            assert response.status_code == 201, response.text
            created[name] = response.json()["id"]
        # 1500 - 25 % = 1125; (30000 - 1000) / 12 = 2416.67 -> 2417; the exempted one pays 0
        assert await mrr_figures(client, db, settings) == {
            "gauge": (3542, 2, 1771), "scrape": (3542, 2, 1771), "job": (3542, 2, 1771)}

        assert (await revoke(client, factory, people, created["monthly"])).status_code == 200
        assert (await revoke(client, factory, people, created["exempt"])).status_code == 200
        figures = await mrr_figures(client, db, settings, scrape=False)
        assert figures == {"gauge": (5417, 3, 1806), "job": (5417, 3, 1806)}


async def mrr_figures(client: httpx.AsyncClient, db: Database, settings: Settings, *,
                      scrape: bool = True) -> dict[str, tuple[int, int, int | None]]:
    """(MRR, paying customers, ARPU) from the live gauge query, /metrics and the daily job."""
    snapshot_ = await query_snapshot(db, settings.plans)
    result: dict[str, tuple[int, int, int | None]] = {"gauge": (
        snapshot_.mrr_cents["patient"], snapshot_.paying_customers["patient"],
        snapshot_.arpu_cents)}
    if scrape:
        response = await client.get("/metrics")
        assert response.status_code == 200
        samples = {line.split(" ")[0]: float(line.split(" ")[1])
                   for line in response.text.splitlines()
                   if line.startswith(("billing_mrr_cents", "billing_paying_customers",
                                       "billing_arpu_cents"))}
        result["scrape"] = (int(samples['billing_mrr_cents{owner_type="patient"}']),
                            int(samples['billing_paying_customers{owner_type="patient"}']),
                            int(samples["billing_arpu_cents"]))
    async with db.unit_of_work() as session:
        figures = await daily_metrics.compute(session, settings, datetime.now(UTC).date())
    result["job"] = (figures["mrr_cents"], figures["paying_customers"], figures["arpu_cents"])
    return result


class TestCouponIds:
    def test_a_coupon_id_survives_redaction_whatever_its_uuid(self) -> None:
        """A bare hex id can hold a Luhn-valid run of 13+ digits; the dashed form cannot."""
        card_like = uuid.UUID("42424242-4242-4242-abcd-ef0123456789")
        assert redact_text(card_like.hex) != card_like.hex  # what the old form lost
        for override_id in [card_like, *(uuid.uuid4() for _ in range(2000))]:
            assert redact_text(coupon_id(override_id)) == coupon_id(override_id)
