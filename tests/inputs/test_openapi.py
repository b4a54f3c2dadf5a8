"""The OpenAPI document lists every status each route answers, with the error envelope's schema.

Two checks: a walk of ``/openapi.json`` (every error status of every audited route points at
``ErrorOut``, and the statuses a route obviously has are there), and a walk of the routes
themselves: each is called without a token, as a patient, and as an admin with malformed,
empty and unknown input, and every status it really answers must be one its document lists.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from billwatch.http import AuditedRoute
from tests.support import Factory, People

ERROR_REF = "#/components/schemas/ErrorOut"
EXPECTED_AT_LEAST = {
    "POST /admin/transactions/{transaction_id}/refund": {400, 401, 403, 404, 409, 422, 500, 502},
    "POST /billing/checkout": {400, 401, 403, 404, 409, 422, 500, 502},
    "POST /billing/subscriptions/{subscription_id}/cancel": {400, 401, 403, 404, 409, 422, 502},
    "POST /admin/overrides": {400, 401, 403, 404, 422, 500},
    "GET /admin/audit-logs": {401, 403, 422, 500},
    "GET /admin/audit-logs/{audit_log_id}": {401, 403, 404, 422, 500},
    "GET /admin/alerts": {401, 403, 422, 500},
    "GET /me": {401, 500},
}


def audited_operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every audited API route, including those of included routers.

    Routes left out of the document (server-rendered pages) answer HTML and are not API.
    """
    routes = list(app.routes)
    for included in app.routes:
        router = getattr(included, "original_router", None)
        routes += list(router.routes) if router is not None else []
    return sorted({(method, route.path) for route in routes
                   if isinstance(route, AuditedRoute) and route.include_in_schema
                   for method in route.methods})


def documented(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    responses: dict[str, Any] = document["paths"][path][method.lower()]["responses"]
    return responses


def concrete(path: str) -> str:
    """``path`` with every parameter filled: an owner type, or an id nothing has."""
    return re.sub(r"\{(\w+)\}", lambda m: "patient" if m.group(1) == "owner_type"
                  else str(uuid.uuid4()), path)


class TestDocument:
    async def test_every_error_status_of_every_audited_route_has_the_envelope(
            self, client: httpx.AsyncClient, app: FastAPI) -> None:
        document = (await client.get("/openapi.json")).json()
        assert "ErrorOut" in document["components"]["schemas"]
        assert "HTTPValidationError" not in document["components"]["schemas"]
        operations = audited_operations(app)
        assert len(operations) >= 15
        for method, path in operations:
            responses = documented(document, method, path)
            errors = {int(code) for code in responses if int(code) >= 400}
            assert 500 in errors, (method, path)
            for code in errors:
                schema = responses[str(code)]["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (method, path, code)
                assert responses[str(code)]["description"], (method, path, code)
        for operation, expected in EXPECTED_AT_LEAST.items():
            method, path = operation.split(" ", 1)
            listed = {int(code) for code in documented(document, method, path)}
            assert expected <= listed, (operation, sorted(expected - listed))

    async def test_the_webhook_route_documents_its_refusals_too(
            self, client: httpx.AsyncClient) -> None:
        document = (await client.get("/openapi.json")).json()
        responses = documented(document, "POST", "/webhooks/stripe")
        for code in ("400", "413", "500"):
            assert responses[code]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}


class TestAnsweredStatusesAreDocumented:
    async def test_every_answer_to_odd_callers_and_input_is_listed(
            self, client: httpx.AsyncClient, app: FastAPI, factory: Factory,
            people: People) -> None:
        document = (await client.get("/openapi.json")).json()
        observed: dict[tuple[str, str], set[int]] = {}
        callers: list[dict[str, str]] = [{}, factory.headers(people.patient),
                                         factory.headers(people.admin)]
        for method, path in audited_operations(app):
            bodies: list[bytes | None] = [None] if method == "GET" else [b"{", b"{}", None]
            for headers in callers:
                for body in bodies:
                    response = await client.request(
                        method, concrete(path), content=body,
                        headers={**headers, "Content-Type": "application/json",
                                 "Idempotency-Key": uuid.uuid4().hex})
                    observed.setdefault((method, path), set()).add(response.status_code)
                    if response.status_code >= 400:
                        assert set(response.json()) == {"error", "detail"}, response.text
        missing = {f"{m} {p}": sorted(s - {int(c) for c in documented(document, m, p)})
                   for (m, p), s in observed.items()}
        assert {op: codes for op, codes in missing.items() if codes} == {}
        answered = set().union(*observed.values())
        assert {400, 401, 403, 404, 422} <= answered  # the walk reached each kind of refusal
