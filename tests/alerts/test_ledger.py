"""The admin alert ledger: filters, newest first, admin only, every read and acknowledgement audited."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx

from billwatch.accounts.models import Role
from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import Alert, AlertKind, AlertStatus, Severity
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from tests.alerts.helpers import alerts, webhook_failures
from tests.support import Factory, audit_rows


async def seed(db: Database) -> list[Alert]:
    """Three alerts a minute apart, oldest first."""
    now = utcnow()
    rows = [
        Alert(id=uuid.uuid4(), created_at=now - timedelta(minutes=3), kind=AlertKind.REFUNDS_HIGH,
              severity=Severity.WARNING, dedup_key="refunds_high:d", subject="7 refunds",
              payload={"refunds_today": 7}, status=AlertStatus.SENT, attempts=1, sent_at=now),
        Alert(id=uuid.uuid4(), created_at=now - timedelta(minutes=2),
              kind=AlertKind.WEBHOOK_FAILURE, severity=Severity.ERROR,
              dedup_key="webhook_failure:invoice.paid", subject="invoice.paid failed",
              payload={}, status=AlertStatus.SUPPRESSED, attempts=0),
        Alert(id=uuid.uuid4(), created_at=now - timedelta(minutes=1),
              kind=AlertKind.WEBHOOK_FAILURE, severity=Severity.ERROR,
              dedup_key="webhook_failure:invoice.paid", subject="invoice.paid failed",
              payload={}, status=AlertStatus.PENDING, attempts=2, last_error="SMTP down"),
    ]
    async with db.unit_of_work() as session:
        session.add_all(rows)
    return rows


class TestListing:
    async def test_newest_first_with_filters(self, client: httpx.AsyncClient, factory: Factory,
                                             db: Database) -> None:
        oldest, middle, newest = await seed(db)
        admin = await factory.user(Role.ADMIN)
        headers = factory.headers(admin)

        everything = await client.get("/admin/alerts", headers=headers)
        assert everything.status_code == 200, everything.text
        assert [item["id"] for item in everything.json()["items"]] == [
            str(newest.id), str(middle.id), str(oldest.id)]

        by_kind = await client.get("/admin/alerts", headers=headers,
                                   params={"kind": "webhook_failure", "status": "pending"})
        assert [item["id"] for item in by_kind.json()["items"]] == [str(newest.id)]
        assert by_kind.json()["items"][0]["last_error"] == "SMTP down"
        by_severity = await client.get("/admin/alerts", headers=headers,
                                       params={"severity": "warning"})
        assert [item["id"] for item in by_severity.json()["items"]] == [str(oldest.id)]
        since = (middle.created_at - timedelta(seconds=1)).isoformat()
        by_time = await client.get("/admin/alerts", headers=headers,
                                   params={"since": since, "limit": 1})
        assert [item["id"] for item in by_time.json()["items"]] == [str(newest.id)]

        reads = await audit_rows(db, event_type=AuditEvent.ALERTS_READ.value)
        assert len(reads) == 4 and all(r.actor_user_id == admin.id for r in reads)
        assert reads[1].data["filters"] == {"kind": "webhook_failure", "status": "pending"}

    async def test_admin_only(self, client: httpx.AsyncClient, factory: Factory,
                              db: Database) -> None:
        await seed(db)
        patient = await factory.user(Role.PATIENT)
        assert (await client.get("/admin/alerts")).status_code == 401
        denied = await client.get("/admin/alerts", headers=factory.headers(patient))
        assert denied.status_code == 403
        [failure] = await audit_rows(db, event_type=AuditEvent.ALERTS_READ.value,
                                     actor_user_id=patient.id)
        assert failure.outcome is Outcome.FAILURE

    async def test_bad_filters_are_422(self, client: httpx.AsyncClient, factory: Factory) -> None:
        headers = factory.headers(await factory.user(Role.ADMIN))
        for params in ({"severity": "loud"}, {"status": "lost"}, {"limit": 0},
                       {"since": "2026-01-01T00:00:00"}):
            response = await client.get("/admin/alerts", headers=headers, params=params)
            assert response.status_code == 422, params


class TestAcknowledge:
    async def test_acknowledge_once(self, client: httpx.AsyncClient, factory: Factory,
                                    db: Database) -> None:
        _, _, newest = await seed(db)
        admin = await factory.user(Role.ADMIN)
        url = f"/admin/alerts/{newest.id}/acknowledge"
        done = await client.post(url, headers=factory.headers(admin), json={"note": "SMTP fixed"})
        assert done.status_code == 200, done.text
        assert done.json()["acknowledged_by_user_id"] == str(admin.id)
        assert done.json()["acknowledged_at"] is not None
        [row] = await audit_rows(db, event_type=AuditEvent.ALERT_ACKNOWLEDGED.value)
        assert row.outcome is Outcome.SUCCESS and row.resource_id == str(newest.id)
        assert row.data["note"] == "SMTP fixed"

        again = await client.post(url, headers=factory.headers(admin))
        assert again.status_code == 409 and again.json()["error"] == "already_acknowledged"
        unacknowledged = await client.get("/admin/alerts", headers=factory.headers(admin),
                                          params={"acknowledged": "false"})
        assert str(newest.id) not in [item["id"] for item in unacknowledged.json()["items"]]

    async def test_unknown_and_forbidden(self, client: httpx.AsyncClient, factory: Factory,
                                         db: Database) -> None:
        _, _, newest = await seed(db)
        admin, proxy = await factory.user(Role.ADMIN), await factory.user(Role.PROXY)
        missing = await client.post(f"/admin/alerts/{uuid.uuid4()}/acknowledge",
                                    headers=factory.headers(admin))
        assert missing.status_code == 404
        forbidden = await client.post(f"/admin/alerts/{newest.id}/acknowledge",
                                      headers=factory.headers(proxy))
        assert forbidden.status_code == 403
        failures = await audit_rows(db, event_type=AuditEvent.ALERT_ACKNOWLEDGED.value,
                                    outcome=Outcome.FAILURE)
        assert len(failures) == 2
        async with db.sessionmaker() as session:
            assert (await session.get(Alert, newest.id)).acknowledged_at is None  # type: ignore[union-attr]


class TestConcurrentAcknowledge:
    async def test_two_at_once_give_one_success_and_one_conflict(
            self, client: httpx.AsyncClient, factory: Factory, db: Database) -> None:
        _, _, newest = await seed(db)
        first, second = await factory.user(Role.ADMIN), await factory.user(Role.ADMIN)
        url = f"/admin/alerts/{newest.id}/acknowledge"
        answers = await asyncio.gather(
            client.post(url, headers=factory.headers(first), json={"note": "mine"}),
            client.post(url, headers=factory.headers(second), json={"note": "mine too"}))
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        [won] = [a for a in answers if a.status_code == 200]
        [lost] = [a for a in answers if a.status_code == 409]
        assert lost.json()["error"] == "already_acknowledged"
        successes = await audit_rows(db, event_type=AuditEvent.ALERT_ACKNOWLEDGED.value,
                                     outcome=Outcome.SUCCESS)
        assert len(successes) == 1
        refused = await audit_rows(db, event_type=AuditEvent.ALERT_ACKNOWLEDGED.value,
                                   outcome=Outcome.FAILURE)
        assert len(refused) == 1  # the loser's call is on record too
        async with db.sessionmaker() as session:
            stored = await session.get(Alert, newest.id)
        assert stored is not None
        assert str(stored.acknowledged_by_user_id) == won.json()["acknowledged_by_user_id"]


class TestIncidents:
    async def test_the_ledger_shows_incidents_and_acknowledging_an_alert_acknowledges_its_incident(
            self, client: httpx.AsyncClient, factory: Factory, db: Database,
            alert_settings: Settings) -> None:
        await webhook_failures(db, 3)
        await deliver_due(db, alert_settings)
        admin = await factory.user(Role.ADMIN)
        listed = await client.get("/admin/alerts/incidents", headers=factory.headers(admin))
        assert listed.status_code == 200, listed.text
        [incident] = listed.json()["items"]
        assert incident["occurrences"] == 3 and incident["mails_sent"] == 1
        assert incident["mailed_occurrences"] == 1 and incident["status"] == "firing"
        assert incident["first_seen_at"] <= incident["last_seen_at"]
        assert incident["acknowledged_at"] is None

        [sent] = await alerts(db, status=AlertStatus.SENT)
        done = await client.post(f"/admin/alerts/{sent.id}/acknowledge",
                                 headers=factory.headers(admin))
        assert done.status_code == 200 and done.json()["incident_id"] == incident["id"]
        listed = await client.get("/admin/alerts/incidents", headers=factory.headers(admin),
                                  params={"status": "firing"})
        [incident] = listed.json()["items"]
        assert incident["acknowledged_by_user_id"] == str(admin.id)
        reads = await audit_rows(db, event_type=AuditEvent.ALERTS_READ.value)
        assert len(reads) == 2 and all(r.data["view"] == "incidents" for r in reads)

    async def test_incidents_are_admin_only_and_filters_are_checked(
            self, client: httpx.AsyncClient, factory: Factory) -> None:
        proxy, admin = await factory.user(Role.PROXY), await factory.user(Role.ADMIN)
        forbidden = await client.get("/admin/alerts/incidents", headers=factory.headers(proxy))
        assert forbidden.status_code == 403
        bad = await client.get("/admin/alerts/incidents", headers=factory.headers(admin),
                               params={"status": "burning"})
        assert bad.status_code == 422
