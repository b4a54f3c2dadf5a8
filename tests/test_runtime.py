"""One runtime per process: what an operation sets off comes from its session, not from imports."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from billwatch.accounts.actor import SystemActor
from billwatch.alerts.models import Alert
from billwatch.app import create_app
from billwatch.audit import crypto, recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.runtime import NoRuntime
from billwatch.secret_keys import KeyRingError
from tests.audit.conftest import audit_rows_refused

OTHER_KEYS = crypto.keys_from(crypto.generate_key_entry("other"),
                              "another-audit-hmac-key-0123456789abcdef")


class Sink:
    """A deliverer that remembers what it was handed."""

    def __init__(self) -> None:
        self.alerts: list[uuid.UUID] = []
        self.failures: list[dict[str, object]] = []

    def alert_raised(self, alert_id: uuid.UUID) -> None:
        self.alerts.append(alert_id)

    def check_requested(self, check: str) -> None:
        return None

    def audit_write_failed(self, details: dict[str, object]) -> None:
        self.failures.append(details)


async def webhook_failure(db: Database) -> None:
    async with db.unit_of_work() as session:
        recorder.record(session, AuditEvent.WEBHOOK_FAILED, actor=SystemActor("stripe"),
                        outcome=Outcome.FAILURE, data={"event_type": "invoice.paid"})


class TestTwoRuntimesInOneProcess:
    async def test_counters_keys_rules_and_deliverers_are_their_own(
            self, db: Database, settings: Settings) -> None:
        alerting = db.with_runtime(build_runtime(settings.model_copy(
            update={"enable_billing_alerts": True})))
        quiet = db.with_runtime(build_runtime(settings.model_copy(
            update={"enable_billing_alerts": False}), keys=OTHER_KEYS))
        sinks = {"alerting": Sink(), "quiet": Sink()}
        alerting.required_runtime().attach(alerts=sinks["alerting"])
        quiet.required_runtime().attach(alerts=sinks["quiet"])

        await webhook_failure(alerting)
        await webhook_failure(quiet)

        async with db.sessionmaker() as session:
            raised = (await session.scalars(select(Alert))).all()
            rows = (await session.scalars(select(AuditLog))).all()
        assert len(raised) == 1  # only the runtime whose settings switch alerts on alerted
        assert sinks["alerting"].alerts == [raised[0].id] and sinks["quiet"].alerts == []
        assert sorted(row.metadata_key_id for row in rows) == ["dev", "other"]
        for database in (alerting, quiet):
            registry = database.required_runtime().metrics.registry
            assert registry.get_sample_value("billing_audit_writes_total",
                                             {"outcome": "failure"}) == 1

    async def test_a_row_decrypts_with_the_keys_of_the_session_that_loaded_it(
            self, db: Database, settings: Settings) -> None:
        other = db.with_runtime(build_runtime(settings, keys=OTHER_KEYS))
        await webhook_failure(other)
        async with other.sessionmaker() as session:
            row = (await session.scalars(select(AuditLog))).one()
            assert row.data == {"event_type": "invoice.paid"}
        async with db.sessionmaker() as session:  # the development ring cannot open it
            row = (await session.scalars(select(AuditLog))).one()
            with pytest.raises(KeyRingError):
                _ = row.data

    async def test_two_apps_count_into_their_own_registries(
            self, db: Database, settings: Settings) -> None:
        first, second = (create_app(settings, database=db) for _ in range(2))
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for _ in range(3):
                assert (await client.get("/healthz")).status_code == 200
        samples = {name: app.state.runtime.metrics.registry.get_sample_value(
            "billing_http_requests_total", {"method": "GET", "route": "/healthz", "status": "200"})
            for name, app in (("first", first), ("second", second))}
        assert samples == {"first": 3.0, "second": None}


class TestWithoutARuntime:
    async def test_a_bare_database_reads_but_refuses_to_record(self, database_url: str) -> None:
        bare = Database(database_url)
        try:
            async with bare.sessionmaker() as session:
                await session.execute(text("SELECT 1"))
            with pytest.raises(NoRuntime):
                async with bare.unit_of_work() as session:
                    recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"))
        finally:
            await bare.dispose()


class TestRefusedRows:
    async def test_a_refused_insert_tells_the_runtime_of_the_failing_session(
            self, db: Database, settings: Settings) -> None:
        """Two runtimes share the engine: only the one whose row was refused hears of it."""
        runtimes = [build_runtime(settings.model_copy(update={"enable_billing_alerts": True}))
                    for _ in range(2)]
        sinks = [Sink(), Sink()]
        for runtime, sink in zip(runtimes, sinks, strict=True):
            runtime.attach(alerts=sink)
        failing, bystander = (db.with_runtime(runtime) for runtime in runtimes)
        await webhook_failure(bystander)  # its connection is pooled, then reused below
        async with audit_rows_refused(db):
            with pytest.raises(DBAPIError):
                await webhook_failure(failing)
        assert [f["stage"] for f in sinks[0].failures] == ["insert"]
        assert sinks[0].failures[0]["event_types"] == [AuditEvent.WEBHOOK_FAILED.value]
        assert sinks[1].failures == []
        failures = [runtime.metrics.registry.get_sample_value("audit_write_failures_total")
                    for runtime in runtimes]
        assert failures == [1.0, 0.0]
