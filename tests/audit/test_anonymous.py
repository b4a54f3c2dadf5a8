"""Callers with no valid identity cannot grow the audit trail (or the alert ledger) at request rate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from billwatch.accounts.models import Role
from billwatch.alerts.models import Alert
from billwatch.audit.anonymous import AnonymousRefusals, client_network, refusals_of
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.events import AuditEvent
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.db import Database
from tests.support import Factory, audit_rows, count
from tests.webhooks import stripe_events

REQUESTS = 1000
MINUTE = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def sample(app: FastAPI, name: str, labels: dict[str, str]) -> float:
    """A counter of the app's own runtime: the test's alone, so it starts at zero."""
    return app.state.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def refused(app: FastAPI, source: str) -> float:
    return sample(app, "audit_anonymous_refusals_total", {"source": source})


async def many(send: object, total: int = REQUESTS, parallel: int = 25) -> list[int]:
    """``total`` calls of ``send()``, ``parallel`` at a time; their status codes."""
    statuses: list[int] = []
    for start in range(0, total, parallel):
        batch = [send() for _ in range(min(parallel, total - start))]  # type: ignore[operator]
        statuses += [response.status_code for response in await asyncio.gather(*batch)]
    return statuses


class TestAnonymousRequests:
    async def test_a_thousand_refused_requests_write_a_handful_of_rows(
            self, app: FastAPI, client: httpx.AsyncClient, db: Database,
            tmp_path: Path) -> None:
        statuses = await many(lambda: client.get("/admin/audit-logs"))
        assert statuses == [401] * REQUESTS
        assert refused(app, "http") == REQUESTS
        await refusals_of(app.state).flush(db, everything=True)  # as at shutdown
        rows = await audit_rows(db)
        # one bucket: its first row, then one count (two buckets if a minute ended meanwhile)
        assert len(rows) in (2, 4), [r.event_type for r in rows]
        firsts = [r for r in rows if r.event_type == AuditEvent.AUDIT_ACCESS_DENIED.value]
        totals = [r for r in rows if r.event_type == AuditEvent.ANONYMOUS_REFUSALS.value]
        assert len(firsts) == len(totals) and all(r.actor_user_id is None for r in firsts)
        assert len(firsts) + sum(r.data["count"] for r in totals) == REQUESTS
        total = totals[0]
        assert total.data["network"] == "203.0.113.0/24"
        assert total.data["event"] == "audit.access_denied"
        assert total.data["route"] == "/admin/audit-logs" and total.data["status_code"] == 401
        assert total.reason == "missing_token"
        store = CheckpointStore(tmp_path / "checkpoints")
        await seal(db, keys=db.required_runtime().keys, store=store)
        assert (await verify(db, keys=db.required_runtime().keys, store=store)).ok

    async def test_callers_with_an_identity_still_write_one_row_each(
            self, client: httpx.AsyncClient, db: Database, factory: Factory) -> None:
        patient = await factory.user(Role.PATIENT)
        for _ in range(3):
            response = await client.get("/admin/audit-logs", headers=factory.headers(patient))
            assert response.status_code == 403
        rows = await audit_rows(db)
        assert [r.actor_user_id for r in rows] == [patient.id] * 3


class TestUnsignedWebhooks:
    async def test_a_thousand_forged_posts_write_a_handful_of_rows_and_one_alert(
            self, app: FastAPI, client: httpx.AsyncClient, db: Database) -> None:
        body = stripe_events.encode(stripe_events.event("invoice.paid", {}))
        forged = stripe_events.sign(body, secrets=("whsec_not_ours",))

        statuses = await many(lambda: client.post("/webhooks/stripe", content=body, headers={
            "Stripe-Signature": forged, "Content-Type": "application/json"}))
        assert statuses == [400] * REQUESTS
        await refusals_of(app.state).flush(db, everything=True)
        rows = await audit_rows(db)
        kinds = sorted({r.event_type for r in rows})
        assert kinds == [AuditEvent.ANONYMOUS_REFUSALS.value, AuditEvent.WEBHOOK_FAILED.value]
        assert len(rows) <= 4  # two if no minute ended during the run
        assert sum(r.data["count"] for r in rows if r.event_type == kinds[0]) + sum(
            1 for r in rows if r.event_type == kinds[1]) == REQUESTS
        assert refused(app, "webhook") == REQUESTS
        assert sample(app, "billing_webhooks_rejected_total", {"reason": "signature"}) == REQUESTS
        assert await count(db, Alert) == 1

    async def test_alert_rows_for_rejections_wait_out_the_cooldown(
            self, app: FastAPI, client: httpx.AsyncClient, db: Database) -> None:
        """Even from many networks (one bucket each) a reason raises one alert per cooldown."""
        body = stripe_events.encode(stripe_events.event("invoice.paid", {}))
        for octet in range(5):
            transport = httpx.ASGITransport(app=app, client=(f"198.51.{octet}.9", 4000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
                response = await other.post("/webhooks/stripe", content=body,
                                            headers={"Content-Type": "application/json"})
                assert response.status_code == 400
        assert len(await audit_rows(db, event_type=AuditEvent.WEBHOOK_FAILED.value)) == 5
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(Alert)) == 1


class TestBuckets:
    def test_networks(self) -> None:
        assert client_network("203.0.113.77") == "203.0.113.0/24"
        assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
        assert client_network("::ffff:198.51.100.4") == "198.51.100.0/24"
        assert client_network(None) == client_network("not an ip") == "unknown"

    async def test_one_row_per_bucket_after_its_minute(self, db: Database) -> None:
        refusals = AnonymousRefusals()
        admitted = [refusals.admit(source="http", event=AuditEvent.AUDIT_ACCESS_DENIED,
                                   route="/admin/audit-logs", method="GET", status_code=401,
                                   reason="missing_token",
                                   client_ip=ip, now=MINUTE + timedelta(seconds=second))
                    for second in range(30) for ip in ("203.0.113.1", "203.0.113.200",
                                                      "198.51.100.1")]
        assert admitted.count(True) == 2  # two networks, one first row each
        assert await refusals.flush(db, now=MINUTE + timedelta(seconds=59)) == 0  # not over yet
        assert await refusals.flush(db, now=MINUTE + timedelta(minutes=1)) == 2
        rows = await audit_rows(db, event_type=AuditEvent.ANONYMOUS_REFUSALS.value)
        assert sorted((r.data["network"], r.data["count"]) for r in rows) == [
            ("198.51.100.0/24", 29), ("203.0.113.0/24", 59)]
        assert rows[0].client_ip is None and rows[0].job_id == "audit:anonymous-refusals"

    def test_many_networks_fold_into_one_bucket_past_the_cap(self) -> None:
        refusals = AnonymousRefusals(max_buckets=10)
        firsts = sum(refusals.admit(source="http", event=AuditEvent.AUDIT_ACCESS_DENIED,
                                    route="/r", method="GET", status_code=401, reason="x",
                                    client_ip=f"10.0.{n}.1", now=MINUTE) for n in range(200))
        assert firsts == 11 and len(refusals.buckets) == 11
        assert {k.network for k in refusals.buckets} >= {"other"}

