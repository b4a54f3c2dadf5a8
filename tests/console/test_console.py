"""The admin console in a real browser (Debian's Chromium, headless), on both databases.

Each test signs in the way an admin does, through the link mailed to the test SMTP server.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta

from axe_playwright_python.async_playwright import Axe
from sqlalchemy import update

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.alerts.models import Alert, AlertKind
from billwatch.alerts.raising import raise_alert
from billwatch.audit import sealing
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.billing.models import Transaction
from billwatch.console.models import ConsoleSession
from billwatch.db import utcnow
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks.models import EventStatus
from tests.audit.tampering import tampering
from tests.console.conftest import LINK, Console, admin, no_serious_violations
from tests.support import audit_rows, paid_subscription, reload
from tests.webhooks.conftest import stored_as_failed, stored_event


class TestSignIn:
    async def test_an_admin_signs_in_by_mail_the_link_works_once_then_signs_out(
            self, console: Console) -> None:
        ada = await admin(console)
        page = console.page
        await page.goto(f"{console.url}/console/audit")
        await page.get_by_role("heading", name="Sign in").wait_for()  # not signed in: sent back
        await console.screenshot("sign-in")
        await console.sign_in(ada, shot="overview")
        [mail] = console.mail.messages(lambda m: ada.email in m.rcpt_tos)
        found = LINK.search(mail.text)
        assert found is not None and "works once" in mail.text
        link = found.group(0)
        cookies = await page.context.cookies()
        [cookie] = [c for c in cookies if c["name"] == "billwatch_console"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        reuse = await page.context.request.post(link, max_redirects=0)
        assert reuse.status == 400  # single use

        await page.get_by_role("button", name="Sign out").click()
        await page.get_by_role("heading", name="Sign in").wait_for()
        await page.goto(f"{console.url}/console")
        await page.get_by_role("heading", name="Sign in").wait_for()
        events = [r.event_type for r in await audit_rows(console.db) if r.actor_user_id == ada.id]
        assert AuditEvent.CONSOLE_SIGNED_IN.value in events
        assert AuditEvent.CONSOLE_SIGNED_OUT.value in events
        assert AuditEvent.CONSOLE_VIEWED.value in events

    async def test_non_admins_and_unknown_addresses_get_the_same_answer_and_no_mail(
            self, console: Console) -> None:
        patient = await console.factory.user(Role.PATIENT)
        ada = await admin(console)
        page = console.page
        answers = []
        for email in (patient.email, "nobody@example.test"):
            await page.goto(f"{console.url}/console/sign-in")
            await page.get_by_label("Admin e-mail address").fill(email)
            await page.get_by_role("button", name="Send me a sign-in link").click()
            await page.get_by_text("a sign-in link is on its way").wait_for()
            answers.append(await page.content())
        await console.sign_in(ada)  # its mail arriving shows the others would have too
        assert answers[0] == answers[1]
        assert [m.rcpt_tos for m in console.mail.messages()] == [[ada.email]]
        refused = [(r.reason, r.outcome) for r in await audit_rows(
            console.db, event_type=AuditEvent.CONSOLE_SIGN_IN_REQUESTED.value)]
        assert ("not_an_admin", Outcome.FAILURE) in refused
        assert ("unknown_address", Outcome.FAILURE) in refused

    async def test_sign_in_requests_are_limited_per_address(self, console: Console) -> None:
        ada = await admin(console)
        for _ in range(console.settings.console_sign_in_limit + 3):
            response = await console.page.context.request.post(
                f"{console.url}/console/sign-in", form={"email": ada.email})
            assert response.status == 200
        await console.mail.wait_for(console.settings.console_sign_in_limit)
        rows = await audit_rows(console.db, event_type=AuditEvent.CONSOLE_SIGN_IN_REQUESTED.value)
        assert len(rows) == console.settings.console_sign_in_limit
        assert len(console.mail.messages()) == console.settings.console_sign_in_limit

    async def test_an_idle_session_is_sent_back_to_sign_in(self, console: Console) -> None:
        await console.sign_in(await admin(console))
        async with console.db.unit_of_work() as session:
            await session.execute(update(ConsoleSession).values(
                last_seen_at=utcnow() - timedelta(seconds=console.settings.console_session_idle_seconds + 1)))
        await console.page.goto(f"{console.url}/console/alerts")
        await console.page.get_by_text("Your session has ended").wait_for()

    async def test_a_post_without_its_csrf_token_is_refused(self, console: Console) -> None:
        await console.sign_in(await admin(console))
        async with console.db.unit_of_work() as session:
            alert = raise_alert(session, AlertKind.WEBHOOK_FAILURE, dedup_key="csrf-test",
                                subject="a test alert", payload={})
        assert alert is not None
        request = console.page.context.request
        refused = await request.post(f"{console.url}/console/alerts/{alert.id}/acknowledge",
                                     form={"note": "no token"})
        forged = await request.post(f"{console.url}/console/alerts/{alert.id}/acknowledge",
                                    form={"note": "wrong token", "csrf": "x" * 43})
        assert (refused.status, forged.status) == (403, 403)
        assert (await reload(console.db, Alert, alert.id)).acknowledged_at is None
        failures = await audit_rows(console.db, event_type=AuditEvent.ALERT_ACKNOWLEDGED.value)
        assert [r.outcome for r in failures] == [Outcome.FAILURE, Outcome.FAILURE]


class TestAuditExplorer:
    async def test_filter_open_a_row_see_it_intact_then_see_the_tampering(
            self, console: Console) -> None:
        ada = await admin(console)
        await console.sign_in(ada)
        await sealing.checkpoint(console.db, console.settings)  # the sign-in rows are sealed now
        page = console.page
        await page.goto(f"{console.url}/console/audit")
        await page.get_by_label("Query").fill(f"event:console.* outcome:success actor:{ada.email}")
        await page.get_by_role("button", name="Search").click()
        await page.get_by_role("cell", name="console.signed_in", exact=True).wait_for()
        assert await page.get_by_role("cell", name="failure", exact=True).count() == 0
        assert await page.get_by_role("cell", name="console.viewed", exact=True).count() >= 1
        await console.screenshot("audit-explorer")
        href = await page.get_by_role("link", name="CSV").get_attribute("href")
        export = await page.context.request.get(f"{console.url}{href}")
        assert export.ok and export.headers["content-type"].startswith("text/csv")
        exported = await export.text()
        assert "console.signed_in" in exported and "console.sign_in.requested" in exported
        assert "outcome" in exported.splitlines()[0]
        row = page.get_by_role("row").filter(has_text="console.signed_in")
        await row.get_by_role("link").click()
        await page.get_by_text("signed in to the console").first.wait_for()
        status = page.get_by_role("status")
        assert (await status.inner_text()).startswith("intact, sealed at seq")
        assert "covered by checkpoint" in await status.inner_text()
        await console.screenshot("audit-row")

        row_id = uuid.UUID(page.url.rsplit("/", 1)[1])
        async with tampering(console.db) as conn:
            await conn.execute(update(AuditLog).where(AuditLog.id == row_id)
                               .values(actor_name="someone else"))
        await page.reload()
        assert (await page.get_by_role("status").inner_text()).startswith("TAMPERED")
        await page.get_by_text("DOES NOT MATCH").wait_for()
        await console.screenshot("audit-row-tampered")

    async def test_a_query_line_typo_is_refused_not_ignored(self, console: Console) -> None:
        await console.sign_in(await admin(console))
        await console.page.goto(f"{console.url}/console/audit?q=evnt:billing.refund.*")
        alert = console.page.get_by_role("alert")
        assert "use one of event" in await alert.inner_text()


class TestActions:
    async def test_acknowledge_an_alert(self, console: Console) -> None:
        await console.sign_in(await admin(console))
        async with console.db.unit_of_work() as session:
            alert = raise_alert(session, AlertKind.WEBHOOK_FAILURE, dedup_key="ack-test",
                                subject="invoice.paid failed twice", payload={})
        assert alert is not None
        page = console.page
        await page.goto(f"{console.url}/console/alerts?open=1")
        row = page.locator(f"#alert-{alert.id}")
        await row.get_by_label("Note").fill("looked at it")
        await row.get_by_role("button", name="Acknowledge").click()
        await page.wait_for_url("**/console/alerts?acknowledged=1")
        assert (await reload(console.db, Alert, alert.id)).acknowledged_at is not None
        await console.screenshot("alerts")
        await page.get_by_role("link", name="invoice.paid failed twice").click()  # what mails link
        await page.get_by_role("heading", name=re.compile(r": invoice\.paid failed twice$")).wait_for()
        assert await page.get_by_role("button", name="Acknowledge").count() == 0
        findings = no_serious_violations(await Axe().run(page))
        assert findings == []

    async def test_replay_a_failed_event(self, console: Console) -> None:
        await console.sign_in(await admin(console))
        event = {"id": f"evt_console{uuid.uuid4().hex[:10]}", "type": "customer.created",
                 "created": int(time.time()), "livemode": False,
                 "data": {"object": {"id": "cus_console", "object": "customer"}}}
        await stored_as_failed(console.db, event, "RuntimeError: boom")
        page = console.page
        await page.goto(f"{console.url}/console/webhooks?status=failed")
        await page.get_by_role("link", name=event["id"]).click()
        await page.get_by_role("link", name="Replay this event…").click()
        await console.screenshot("webhook-replay")
        await page.get_by_role("button", name=f"Replay {event['id']}").click()
        await page.wait_for_url("**?replayed=ignored")
        attempts = page.get_by_role("table", name="Every attempt at handling this event, first to last")
        assert await attempts.get_by_role("row").count() == 2  # the header and the replay
        assert await attempts.get_by_role("cell", name="replay", exact=True).count() == 1
        stored = await stored_event(console.db, event["id"])
        assert stored is not None and stored.status is EventStatus.IGNORED
        [requested] = await audit_rows(console.db,
                                       event_type=AuditEvent.WEBHOOK_REPLAY_REQUESTED.value)
        assert requested.data["stripe_event_id"] == event["id"]

    async def test_refund_from_the_owner_page_with_a_confirmation_step(self, console: Console) -> None:
        ada = await admin(console)
        patient = await console.factory.user(Role.PATIENT, name="Pat Patient")
        _, payment = await paid_subscription(console.db, console.settings,
                                             OwnerRef(OwnerType.PATIENT, patient.id))
        await console.sign_in(ada)
        page = console.page
        await page.goto(f"{console.url}/console/owners/patient/{patient.id}")
        await page.get_by_role("heading", name="Patient Pat Patient").wait_for()
        await console.screenshot("owner")
        await page.get_by_label("Amount").fill("5.00")
        await page.get_by_label("Reason").select_option("duplicate")
        await page.get_by_label("Note").fill("charged twice")
        await page.get_by_role("button", name="Refund…").click()
        await page.get_by_role("heading", name="Confirm the refund").wait_for()
        assert (await reload(console.db, Transaction, payment.id)).refunded_cents == 0
        confirmation = {name: await page.locator(f"main input[name={name}]").input_value()
                        for name in ("csrf", "amount", "reason", "note", "confirm", "key")}
        await page.get_by_role("button", name="Refund 5.00 USD").click()
        await page.wait_for_url(f"**/console/owners/patient/{patient.id}?refunded={payment.id}")
        assert (await reload(console.db, Transaction, payment.id)).refunded_cents == 500
        again = await page.context.request.post(  # the confirmation sent a second time
            f"{console.url}/console/owners/patient/{patient.id}/payments/{payment.id}/refund",
            form=confirmation)
        assert again.ok
        assert (await reload(console.db, Transaction, payment.id)).refunded_cents == 500
        charge = await PaymentsGateway(console.settings).client.v1.charges.retrieve_async(
            payment.stripe_charge_id or "")
        assert charge.amount_refunded == 500
        [issued] = await audit_rows(console.db, event_type=AuditEvent.REFUND_ISSUED.value)
        assert issued.actor_user_id == ada.id and issued.data["reason"] == "duplicate"
        await page.get_by_text("Ada Admin refunded 5.00 USD").first.wait_for()


class TestQuality:
    async def test_every_page_is_accessible_and_locked_down(self, console: Console) -> None:
        ada = await admin(console)
        patient = await console.factory.user(Role.PATIENT, name="Pat Patient")
        await console.page.goto(f"{console.url}/console/sign-in")
        pages = ["/console/sign-in"]
        axe = Axe()
        findings = {"/console/sign-in": no_serious_violations(await axe.run(console.page))}
        await console.sign_in(ada)
        async with console.db.sessionmaker() as session:
            row_id = (await session.scalars(
                AuditLog.__table__.select().with_only_columns(AuditLog.id).limit(1))).first()
        pages = ["/console", "/console/audit", f"/console/audit/{row_id}", "/console/alerts",
                 "/console/webhooks", f"/console/owners/patient/{patient.id}"]
        for path in pages:
            response = await console.page.goto(f"{console.url}{path}")
            assert response is not None and response.status == 200, path
            headers = response.headers
            assert headers["content-security-policy"].startswith("default-src 'self'")
            assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
            assert "<script" not in await console.page.content()
            findings[path] = no_serious_violations(await axe.run(console.page))
        assert {path: found for path, found in findings.items() if found} == {}

    async def test_pages_read_by_keyboard_alone(self, console: Console) -> None:
        await console.sign_in(await admin(console))
        page = console.page
        await page.goto(f"{console.url}/console")
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
        for _ in range(3):
            await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.getAttribute('href')") == "/console/alerts"
        await page.keyboard.press("Enter")
        await page.get_by_role("heading", name="Alerts").wait_for()

