"""Label values come from closed sets: never ids, e-mails, amounts or free text."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.billing.models import CheckoutSession
from billwatch.billing.refunds import RefundReason
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.metrics import labels
from billwatch.runtime import Runtime
from tests.metrics.helpers import label_offences, scrape, suspicious, total, value
from tests.support import Factory, People, keyed, paid_subscription


class TestClosedSets:
    def test_refund_categories_mirror_the_refund_reasons(self) -> None:
        assert set(labels.REFUND_REASON_CATEGORIES) == {r.value for r in RefundReason}

    def test_webhook_labels_mirror_the_handled_types_and_reject_reasons(self) -> None:
        from billwatch.webhooks.handlers import HANDLERS
        from billwatch.webhooks.signature import RejectReason

        assert set(labels.webhook_event_types()) == {*HANDLERS, "other"}
        assert set(labels.WEBHOOK_REJECT_REASONS) == {r.value for r in RejectReason}

    def test_alert_kinds_mirror_the_alert_model(self) -> None:
        from billwatch.alerts.models import AlertKind

        assert set(labels.alert_kinds()) == {k.value for k in AlertKind}

    def test_owner_types_mirror_the_model(self) -> None:
        assert set(labels.OWNER_TYPES) == {t.value for t in OwnerType}

    @pytest.mark.parametrize("hostile", [
        "3f2b8c1e-9a4d-4e8b-b1c2-0d9e8f7a6b5c", "cus_NffrFeUfNV2Hib", "ch_3MmlLrLkdIwHu7ix0snN0B15",
        "evt_1NG8Du2eZvKYlo2CUI79vXWy", "someone@example.test", "123456", "free text with spaces",
    ])
    def test_anything_outside_a_set_becomes_other(self, hostile: str) -> None:
        assert labels.owner_type(hostile) == "other"
        assert labels.reason_category(hostile) == "other"
        assert labels.webhook_event_type(hostile) == "other"
        assert labels.payment_failure_reason(hostile) == "other"
        assert labels.alert_kind(hostile) == "other"
        assert labels.closed(hostile, labels.CANCELLED_BY) == "other"

    def test_members_pass_through(self) -> None:
        assert labels.owner_type(OwnerType.ORGANIZATION) == "organization"
        assert labels.reason_category(RefundReason.DUPLICATE) == "duplicate"
        assert labels.webhook_event_type("invoice.payment_failed") == "invoice.payment_failed"
        assert labels.alert_kind("payment_final_failure") == "payment_final_failure"
        assert labels.http_method("get") == "GET" and labels.http_method("BREW") == "other"

    @pytest.mark.parametrize("bad", [
        "3f2b8c1e-9a4d-4e8b-b1c2-0d9e8f7a6b5c", "3f2b8c1e9a4d4e8bb1c20d9e8f7a6b5c",
        "cus_NffrFeUfNV2Hib", "sub_1MowQVLkdIwHu7ixeRlqHVzs", "in_1MtHbELkdIwHu7ixl4OzzPMv",
        "a.person@clinic.example", "/billing/owners/patient/123456",
    ])
    def test_the_detector_catches_identifying_values(self, bad: str) -> None:
        assert suspicious(bad) is not None

    @pytest.mark.parametrize("fine", [
        "basic_monthly", "requested_by_customer", "/billing/subscriptions/{subscription_id}/cancel",
        "invoice.payment_succeeded", "payment_final_failure", "201", "organization", "other",
    ])
    def test_the_detector_passes_closed_values(self, fine: str) -> None:
        assert suspicious(fine) is None


class TestHostileCallers:
    async def test_ids_passed_to_the_functions_never_reach_a_label(
            self, client: httpx.AsyncClient, settings: Settings, runtime: Runtime) -> None:
        billing = runtime.metrics  # the app's, as the app fixture shares the test's runtime
        billing.checkout_created("patient", "price_1MoBy5LkdIwHu7ixZhnattbh", by_proxy=False)
        billing.subscription_cancelled("cus_NffrFeUfNV2Hib", "someone@example.test")
        billing.refund_issued("refund for invoice in_1MtHbELkdIwHu7ixl4OzzPMv", 1200)
        billing.payment_failed("patient", "do_not_honor_123456", final=True)
        billing.webhooks_rejected.labels(reason="3f2b8c1e-9a4d-4e8b-b1c2-0d9e8f7a6b5c").inc()
        billing.alert_sent("alert-4242424242424242")
        billing.manager_assigned("someone@example.test")
        billing.webhooks_received.labels(event_type="evt_1NG8Du2eZvKYlo2CUI79vXWy").inc()
        billing.payments_failed.labels("cus_NffrFeUfNV2Hib", "card_declined_99999").inc()
        billing.webhook_seconds.labels("3f2b8c1e9a4d4e8bb1c20d9e8f7a6b5c").observe(0.1)
        samples = await scrape(client)
        assert label_offences(samples) == []
        assert value(samples, "billing_checkouts_created_total",
                     owner_type="patient", plan="other") >= 1
        assert value(samples, "billing_alerts_sent_total", kind="other") >= 1


async def _drive_traffic(client: httpx.AsyncClient, db: Database, factory: Factory,
                         settings: Settings, people: People) -> None:
    """What a day of billing looks like from the outside, including what goes wrong."""
    admin, patient, proxy = (factory.headers(u) for u in (people.admin, people.patient, people.proxy))
    assigned = await client.post(f"/patients/{people.patient.id}/billing-managers", headers=patient,
                                 json={"proxy_id": str(people.proxy.id)})
    assert assigned.status_code == 201, assigned.text
    for headers, plan in ((patient, "basic_monthly"), (proxy, "plus_yearly")):
        checkout = await client.post("/billing/checkout", headers=headers,
                                     json={**people.owner_body, "plan_code": plan})
        assert checkout.status_code == 201, checkout.text
        async with db.unit_of_work() as session:  # its session expires, so another may open
            await session.execute(update(CheckoutSession).where(
                CheckoutSession.id == uuid.UUID(checkout.json()["id"])).values(
                expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    clinic_admin = await factory.user(Role.PATIENT)
    clinic = await factory.organization(billing_admins=[clinic_admin])
    org_checkout = await client.post("/billing/checkout", headers=factory.headers(clinic_admin), json={
        "owner_type": "organization", "owner_id": str(clinic.id), "plan_code": "clinic_monthly"})
    assert org_checkout.status_code == 201, org_checkout.text
    assert (await client.get(f"/billing/owners/patient/{people.patient.id}",
                             headers=proxy)).status_code == 200

    family = await factory.user(Role.PATIENT)
    assert (await client.post(f"/patients/{family.id}/billing-managers", headers=factory.headers(family),
                              json={"proxy_id": str(people.proxy.id)})).status_code == 201
    subscription, payment = await paid_subscription(
        db, settings, OwnerRef(OwnerType.PATIENT, family.id))
    refund = await client.post(f"/admin/transactions/{payment.id}/refund", headers=keyed(admin),
                               json={"amount_cents": 300, "reason": "service_issue",
                                     "note": f"call {people.patient.email} about 4242424242424242"})
    assert refund.status_code == 201, refund.text
    cancel = await client.post(f"/billing/subscriptions/{subscription.id}/cancel", headers=proxy,
                               json={"at_period_end": False, "reason": "moving abroad"})
    assert cancel.status_code == 200, cancel.text
    other, other_payment = await paid_subscription(
        db, settings, OwnerRef(OwnerType.PATIENT, (await factory.user(Role.PATIENT)).id))
    assert (await client.post(f"/billing/subscriptions/{other.id}/cancel", headers=admin,
                              json={"at_period_end": True})).status_code == 200

    bad = [
        client.post("/billing/checkout", headers=patient, json={**people.owner_body, "plan_code": "x" * 30}),
        client.post("/billing/checkout", headers=proxy, json={
            "owner_type": "patient", "owner_id": str(uuid.uuid4()), "plan_code": "basic_monthly"}),
        client.post("/billing/checkout", json={**people.owner_body, "plan_code": "basic_monthly"}),
        client.post("/billing/checkout", headers=patient, content=b"{not json"),
        client.post(f"/admin/transactions/{uuid.uuid4()}/refund", headers=keyed(admin),
                    json={"reason": "other"}),
        client.post(f"/admin/transactions/{other_payment.id}/refund", headers=keyed(patient),
                    json={"reason": "fraudulent"}),
        client.post(f"/admin/transactions/{other_payment.id}/refund", headers=keyed(admin),
                    json={"amount_cents": 10_000_000, "reason": "duplicate"}),
        client.get(f"/billing/owners/patient/{uuid.uuid4()}/{people.patient.email}", headers=patient),
        client.get(f"/no/such/page/cus_NffrFeUfNV2Hib/{payment.stripe_charge_id}"),
        client.delete("/billing/checkout", headers=patient),
    ]
    statuses = [(await request).status_code for request in bad]
    assert all(400 <= status < 500 for status in statuses), statuses


class TestRealTraffic:
    async def test_no_label_value_identifies_anyone(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, settings: Settings,
            people: People) -> None:
        before = await scrape(client)
        await _drive_traffic(client, db, factory, settings, people)
        samples = await scrape(client)
        assert label_offences(samples) == []

        def moved(name: str, **lbls: str) -> float:
            return total(samples, name, **lbls) - total(before, name, **lbls)

        assert moved("billing_checkouts_created_total", owner_type="patient", plan="plus_yearly") == 1
        assert moved("billing_checkouts_created_total", owner_type="organization") == 1
        assert moved("billing_proxy_actions_total", action_type="checkout") == 1
        assert moved("billing_proxy_actions_total", action_type="view") == 1
        assert moved("billing_proxy_actions_total", action_type="cancel") == 1
        assert moved("billing_manager_assignments_total", assigned_by_type="patient") == 2
        assert moved("billing_refunds_issued_total", reason_category="service_issue") == 1
        assert moved("billing_refund_amount_cents_sum") == 300
        assert moved("billing_subscriptions_cancelled_total", cancelled_by="proxy") == 1
        assert moved("billing_subscriptions_cancelled_total", cancelled_by="admin") == 1
        routes = {dict(lbls).get("route") for name, lbls in samples
                  if name == "billing_http_requests_total"}
        assert {"/billing/checkout", "/admin/transactions/{transaction_id}/refund",
                "/billing/subscriptions/{subscription_id}/cancel",
                "/patients/{patient_id}/billing-managers", "unmatched"} <= routes
        assert moved("billing_http_requests_total", route="/billing/checkout", status="400") == 1
        assert moved("billing_http_requests_total", route="/billing/checkout", status="405") == 1
        assert moved("billing_http_requests_total", route="unmatched", status="404") == 2
