"""GET /metrics: Prometheus text that promtool accepts, outside the audited unit of work."""

from __future__ import annotations

import asyncio
import shutil

import httpx
from fastapi.routing import APIRoute

from billwatch.accounts.models import Role
from billwatch.app import create_app
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.http import AuditedRoute
from billwatch.metrics.middleware import route_template
from billwatch.monitoring.exposition import router as metrics_router
from billwatch.runtime import Runtime
from tests.metrics.helpers import parse, value
from tests.support import Factory, People, audit_rows

PROMTOOL = shutil.which("promtool")


class TestEndpoint:
    async def test_text_format_with_every_family_of_the_contract(
            self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {name for name, _ in parse(response.text)}
        for family in ("billing_checkouts_created_total", "billing_payments_succeeded_total",
                       "billing_payments_failed_total", "billing_refunds_issued_total",
                       "billing_subscriptions_created_total", "billing_subscriptions_cancelled_total",
                       "billing_manager_assignments_total", "billing_proxy_actions_total",
                       "billing_webhooks_received_total", "billing_webhooks_failed_total",
                       "billing_webhooks_rejected_total", "billing_alerts_sent_total",
                       "billing_audit_writes_total", "audit_write_failures_total",
                       "billing_payment_final_failures_total",
                       "billing_webhook_processing_seconds_bucket",
                       "billing_payment_amount_cents_bucket", "billing_refund_amount_cents_count",
                       "billing_http_requests_total", "billing_http_request_duration_seconds_count",
                       "billing_active_subscriptions", "billing_mrr_cents",
                       "billing_proxy_managed_subscriptions", "billing_paying_customers",
                       "billing_arpu_cents"):
            assert family in names, family
        assert not any(name.endswith("_created") for name in names)

    async def test_payment_amount_buckets(self, client: httpx.AsyncClient) -> None:
        samples = parse((await client.get("/metrics")).text)
        bounds = {dict(lbls)["le"] for name, lbls in samples
                  if name == "billing_payment_amount_cents_bucket"}
        assert bounds == {"1000.0", "2500.0", "5000.0", "10000.0", "25000.0", "50000.0",
                          "100000.0", "+Inf"}

    async def test_openmetrics_when_asked(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")

    async def test_a_scrape_is_not_audited_and_needs_no_token(
            self, client: httpx.AsyncClient, db: Database) -> None:
        assert [type(route) for route in metrics_router.routes] == [APIRoute]
        assert not issubclass(APIRoute, AuditedRoute)
        for _ in range(3):
            assert (await client.get("/metrics")).status_code == 200
        assert await audit_rows(db) == []

    async def test_billing_switched_off_still_answers(self, settings: Settings) -> None:
        off = build_runtime(settings.model_copy(update={"enable_billing_metrics": False}))
        assert not off.metrics.switch.is_enabled()
        off.metrics.refund_issued("duplicate", 500)
        assert off.metrics.registry.get_sample_value("billing_refunds_issued_total",
                                                     {"reason_category": "duplicate"}) is None
        app = create_app(off.settings, runtime=off)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            assert (await client.get("/metrics")).status_code == 200


class TestHttpMetrics:
    async def test_routes_are_templates_and_latency_is_recorded(
            self, client: httpx.AsyncClient, factory: Factory, people: People) -> None:
        before = parse((await client.get("/metrics")).text)
        headers = factory.headers(people.patient)
        for _ in range(3):
            response = await client.get(f"/billing/owners/patient/{people.patient.id}", headers=headers)
            assert response.status_code == 200
        after = parse((await client.get("/metrics")).text)
        template = "/billing/owners/{owner_type}/{owner_id}"
        labels = {"method": "GET", "route": template}
        assert value(after, "billing_http_requests_total", **labels, status="200") - \
            value(before, "billing_http_requests_total", **labels, status="200") == 3
        assert value(after, "billing_http_request_duration_seconds_count", **labels) - \
            value(before, "billing_http_request_duration_seconds_count", **labels) == 3
        assert value(after, "billing_http_request_duration_seconds_sum", **labels) > \
            value(before, "billing_http_request_duration_seconds_sum", **labels)
        assert value(after, "billing_http_requests_in_progress") == 1  # the scrape itself

    def test_unmatched_requests_have_no_route(self) -> None:
        assert route_template({"type": "http", "path": "/x/123"}) == "unmatched"


class TestPromtool:
    async def test_check_metrics_is_clean_after_traffic(
            self, client: httpx.AsyncClient, factory: Factory, people: People,
            runtime: Runtime) -> None:
        assert PROMTOOL, "promtool missing: `make test` installs Debian's prometheus package"
        admin = await factory.user(Role.ADMIN)
        await client.post("/billing/checkout", headers=factory.headers(people.patient),
                          json={**people.owner_body, "plan_code": "basic_monthly"})
        await client.get("/admin/overrides", headers=factory.headers(admin))
        runtime.metrics.payment_succeeded("organization", "clinic_monthly", 9900)
        runtime.metrics.webhook_seconds.labels(event_type="invoice.paid").observe(0.042)
        body = (await client.get("/metrics")).text
        checked = await asyncio.create_subprocess_exec(
            str(PROMTOOL), "check", "metrics", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(checked.communicate(body.encode()), timeout=60)
        assert (checked.returncode, output.decode()) == (0, "")
