"""End to end: signed Stripe webhooks through the real endpoint raise (and dedup) alerts."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from billwatch.accounts.models import OwnerType, Role
from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import AlertKind, AlertStatus
from billwatch.billing.models import StripeCustomer
from billwatch.config import Settings
from billwatch.db import Database
from tests.alerts.helpers import alerts, assert_no_card, statuses
from tests.alerts.mailbox import Mailbox
from tests.support import Factory
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import drain_inbox


async def post(client: httpx.AsyncClient, app: FastAPI, event: dict[str, Any]) -> httpx.Response:
    """Deliver a signed event, then process the inbox as the app's runner would after commit."""
    body = se.encode(event)
    response = await client.post("/webhooks/stripe", content=body,
                                 headers={"Stripe-Signature": se.sign(body),
                                          "Content-Type": "application/json"})
    await drain_inbox(app)
    return response


class TestFinalPaymentFailureFromStripe:
    async def test_one_mail_per_invoice_however_often_stripe_sends(
            self, client: httpx.AsyncClient, app: FastAPI, factory: Factory, db: Database,
            alert_settings: Settings, mailbox: Mailbox) -> None:
        patient = await factory.user(Role.PATIENT)
        customer = se.new_id("cus")
        async with db.unit_of_work() as session:
            session.add(StripeCustomer(id=uuid.uuid4(), owner_type=OwnerType.PATIENT,
                                       owner_id=patient.id, stripe_customer_id=customer,
                                       idempotency_key=f"test:{customer}"))
        invoice_id = se.new_id("in")

        def failed(attempt: int) -> dict[str, Any]:
            intent = se.declined_payment_intent(pi_id=se.new_id("pi"), customer=customer,
                                                amount=3000)
            return se.event("invoice.payment_failed", se.invoice(
                invoice_id=invoice_id, customer=customer, subscription_id=None,
                price="billwatch_plus_monthly", amount=3000, paid=False, attempt_count=attempt,
                payment_intent=intent))

        final = failed(3)
        for event in (failed(1), failed(2), final, final, failed(3), failed(4)):
            response = await post(client, app, event)  # Stripe re-sends, and retries once more
            assert response.status_code == 200, response.text
        await deliver_due(db, alert_settings)

        assert await statuses(db, kind=AlertKind.PAYMENT_FINAL_FAILURE) == {
            AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 1}  # attempts 3 and 4; duplicates no row
        [mail] = mailbox.messages()
        assert invoice_id in mail.subject and mail.message["X-Billwatch-Severity"] == "error"
        assert "card_declined" in mail.text and "attempt count: 3" in mail.text
        assert_no_card(mail.text + mail.html)
        [sent] = await alerts(db, status=AlertStatus.SENT)
        assert sent.payload["stripe_customer_id"] == customer
        assert sent.payload["owner_id"] == str(patient.id)


class TestAMailAPersonCanActOn:
    async def test_a_final_failure_mail_shows_money_the_owner_and_the_next_step(
            self, client: httpx.AsyncClient, app: FastAPI, factory: Factory, db: Database,
            alert_settings: Settings, mailbox: Mailbox) -> None:
        patient = await factory.user(Role.PATIENT, name="Ada Lovelace")
        customer = se.new_id("cus")
        async with db.unit_of_work() as session:
            session.add(StripeCustomer(id=uuid.uuid4(), owner_type=OwnerType.PATIENT,
                                       owner_id=patient.id, stripe_customer_id=customer,
                                       idempotency_key=f"test:{customer}"))
        intent = se.declined_payment_intent(pi_id=se.new_id("pi"), customer=customer, amount=1500)
        event = se.event("invoice.payment_failed", se.invoice(
            invoice_id=se.new_id("in"), customer=customer, subscription_id=None,
            price="billwatch_basic_monthly", amount=1500, paid=False, attempt_count=3,
            payment_intent=intent))
        assert (await post(client, app, event)).status_code == 200
        settings = alert_settings.model_copy(update={
            "docs_base_url": "https://docs.example.test/billwatch/",
            "console_base_url": "https://console.example.test"})
        await deliver_due(db, settings)

        [mail] = mailbox.messages()
        [alert] = await alerts(db, status=AlertStatus.SENT)
        masked = patient.email[0] + "***@example.test"
        for body in (mail.text, mail.html):
            assert "15.00 USD" in body and "1500" not in body  # money, not minor units
            assert "Ada Lovelace" in body and masked in body and patient.email not in body
            assert "What happens next" in body and "Stripe makes no further automatic attempt" in body
            assert "https://docs.example.test/billwatch/operations/alerts/payment-final-failure.md" in body
            assert f"https://console.example.test/console/alerts/{alert.id}" in body
            assert f"https://console.example.test/console/owners/patient/{patient.id}" in body
            assert_no_card(body)

    async def test_without_base_urls_there_are_no_links(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        from tests.alerts.helpers import payment_failed

        await payment_failed(db, invoice="in_nolinks", attempt=3, amount_cents=123456)
        await deliver_due(db, alert_settings)
        [mail] = mailbox.messages()
        for body in (mail.text, mail.html):
            assert "1,234.56 USD" in body and "http" not in body.replace("http-equiv", "")
            assert "an unknown customer" not in body  # the Stripe customer is named instead
