"""Security headers, API docs off in production, /metrics behind its token, no open redirects."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.hardening import allowed_redirect_origins, origin_of
from tests.support import People, audit_rows
from tests.support import test_settings as make_settings
from tests.test_startup import production

METRICS_TOKEN = "billwatch-metrics-token-for-this-test-0123"


async def asgi_client(app: FastAPI, base_url: str = "http://testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


class TestHeaders:
    async def test_every_response_carries_them(self, client: httpx.AsyncClient,
                                                people: People) -> None:
        for response in (await client.get("/healthz"), await client.get("/me"),
                         await client.get("/nowhere"), await client.get("/metrics"),
                         await client.post("/webhooks/stripe", content=b"{}")):
            assert response.headers["x-content-type-options"] == "nosniff", response.url
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-store"
            assert "strict-transport-security" not in response.headers  # plain http

    async def test_billing_and_audit_data_is_never_stored_by_caches(
            self, client: httpx.AsyncClient, people: People, settings: Settings) -> None:
        from billwatch.accounts.tokens import mint_token

        admin = {"Authorization": f"Bearer {mint_token(people.admin, settings)}"}
        owner = {"Authorization": f"Bearer {mint_token(people.patient, settings)}"}
        audit = await client.get("/admin/audit-logs", headers=admin)
        billing = await client.get(f"/billing/owners/patient/{people.patient.id}", headers=owner)
        assert (audit.status_code, billing.status_code) == (200, 200)
        assert audit.headers["cache-control"] == billing.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in billing.headers["content-security-policy"]

    async def test_hsts_only_over_tls(self, app: FastAPI) -> None:
        async with await asgi_client(app, "https://billing.example.test") as https:
            response = await https.get("/healthz")
        assert response.headers["strict-transport-security"].startswith("max-age=31536000")


class TestDocs:
    async def test_off_in_production_by_default(self) -> None:
        app = create_app(production())
        async with await asgi_client(app) as http:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (await http.get(path)).status_code == 404, path
        assert app.openapi()["paths"]  # the document still exists for the completeness checks

    async def test_on_when_enabled(self) -> None:
        async with await asgi_client(create_app(production(enable_api_docs=True))) as http:
            assert (await http.get("/openapi.json")).json()["info"]["title"] == "billwatch"
            docs = await http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "content-security-policy" not in docs.headers  # Swagger UI loads its assets

    def test_development_enables_them_unless_told_otherwise(self) -> None:
        dev: dict[str, Any] = {"env": "development", "database_url": "sqlite+aiosqlite://"}
        assert Settings(_env_file=None, **dev).api_docs_enabled  # type: ignore[call-arg]
        assert not Settings(_env_file=None, **dev,  # type: ignore[call-arg]
                            enable_api_docs=False).api_docs_enabled


@pytest.fixture
async def token_client(db: Database, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    with_token = make_settings(settings.database_url, settings.stripe_api_base or "",
                               metrics_token=METRICS_TOKEN)
    app = create_app(with_token, database=db)
    async with await asgi_client(app) as http:
        yield http


class TestMetricsToken:
    async def test_401_without_or_with_a_wrong_token_200_with_it(
            self, token_client: httpx.AsyncClient) -> None:
        missing = await token_client.get("/metrics")
        wrong = await token_client.get("/metrics", headers={"Authorization": "Bearer nope"})
        basic = await token_client.get("/metrics",
                                       headers={"Authorization": f"Basic {METRICS_TOKEN}"})
        for refused in (missing, wrong, basic):
            assert refused.status_code == 401
            assert refused.json()["error"] == "invalid_metrics_token"
            assert "billing_" not in refused.text
        scraped = await token_client.get("/metrics",
                                         headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200 and "billing_http_requests_total" in scraped.text

    async def test_production_without_a_token_serves_no_metrics(self) -> None:
        async with await asgi_client(create_app(production())) as http:
            refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"] == "metrics_token_not_configured"
        assert "BILLWATCH_METRICS_TOKEN" in refused.json()["detail"]

    async def test_production_with_a_token(self) -> None:
        token = secrets.token_urlsafe(32)
        async with await asgi_client(create_app(production(metrics_token=token))) as http:
            assert (await http.get("/metrics")).status_code == 401
            scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200


class TestRedirectOrigins:
    def test_origins(self) -> None:
        assert origin_of("HTTPS://Clinic.Example:443/x?y") == "https://clinic.example"
        assert origin_of("http://127.0.0.1:8000/billing") == "http://127.0.0.1:8000"
        for bad in ("javascript:alert(1)", "//evil.test/x", "https://user:pw@evil.test/",
                    "ftp://files.test/", "https://[::1/"):
            assert origin_of(bad) is None, bad
        settings = make_settings("sqlite+aiosqlite://", "http://127.0.0.1:9")
        assert allowed_redirect_origins(settings) == {"http://127.0.0.1:8000"}
        configured = settings.model_copy(update={"allowed_redirect_origins": [
            "https://app.clinic.test", "https://portal.clinic.test/"]})
        assert allowed_redirect_origins(configured) == {"https://app.clinic.test",
                                                       "https://portal.clinic.test"}
        from_env = Settings(_env_file=None,  # type: ignore[call-arg]
                            allowed_redirect_origins="https://a.test, https://b.test")
        assert from_env.allowed_redirect_origins == ["https://a.test", "https://b.test"]

    @pytest.mark.parametrize("field", ["success_url", "cancel_url"])
    async def test_checkout_to_a_foreign_origin_is_422(
            self, client: httpx.AsyncClient, db: Database, people: People, settings: Settings,
            field: str) -> None:
        from billwatch.accounts.tokens import mint_token

        headers = {"Authorization": f"Bearer {mint_token(people.patient, settings)}"}
        body = {**people.owner_body, "plan_code": "basic_monthly",
                field: "https://billing-login.evil.test/steal"}
        response = await client.post("/billing/checkout", headers=headers, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "redirect_not_allowed"
        assert field in response.json()["detail"]
        [row] = await audit_rows(db)
        assert row.outcome is Outcome.FAILURE and row.reason is not None
        assert row.reason.startswith("redirect_not_allowed")

    async def test_checkout_back_to_our_origin_is_accepted(
            self, client: httpx.AsyncClient, people: People, settings: Settings) -> None:
        from billwatch.accounts.tokens import mint_token

        headers = {"Authorization": f"Bearer {mint_token(people.patient, settings)}"}
        body = {**people.owner_body, "plan_code": "basic_monthly",
                "success_url": "http://127.0.0.1:8000/thanks?session={CHECKOUT_SESSION_ID}",
                "cancel_url": "http://127.0.0.1:8000/billing"}
        response = await client.post("/billing/checkout", headers=headers, json=body)
        assert response.status_code == 201, response.text

    async def test_portal_return_to_a_foreign_origin_is_422(
            self, client: httpx.AsyncClient, people: People, settings: Settings) -> None:
        from billwatch.accounts.tokens import mint_token

        headers = {"Authorization": f"Bearer {mint_token(people.patient, settings)}"}
        body = {**people.owner_body, "return_url": "http://127.0.0.1:8001/"}  # another port
        response = await client.post("/billing/portal", headers=headers, json=body)
        assert response.status_code == 422 and response.json()["error"] == "redirect_not_allowed"
