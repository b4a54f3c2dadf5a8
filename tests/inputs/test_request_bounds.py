"""Odd input is refused at the schema boundary with a 422 and a reason, never a 500.

Every class the database would refuse later (NUL, lone surrogates, control characters in
one-line values, datetimes whose UTC value overflows, integers past int64) and every coercion a
strict body refuses (``true`` or ``"100"`` for an integer, ``1`` for a boolean) is sent to each
route that stores or queries with it; each answers 422, stores nothing and writes exactly one
failure row. Bodies are sent as raw JSON so lone surrogates travel as ``\\ud800`` escapes.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from billwatch.schema_types import INT64_MAX, bounded_instant, unstorable
from tests.inputs.helpers import (
    INT64_OVERFLOW,
    OVERFLOWING_DATETIME,
    assert_refused,
    business_state,
)
from tests.support import Factory, People, audit_rows, paid_subscription

SOME_ID = "00000000-0000-4000-8000-000000000001"
OWNER = {"owner_type": "patient", "owner_id": SOME_ID}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    event: str
    field: str
    """The field the 422's detail must name."""
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None


def refund(**fields: Any) -> dict[str, Any]:
    return {"reason": "duplicate", **fields}


def override(**fields: Any) -> dict[str, Any]:
    return {**OWNER, "kind": "discount", "reason": "loyal patient", "percent_off": 10, **fields}


def grant(**fields: Any) -> dict[str, Any]:
    return {**OWNER, "plan_code": "basic_monthly", "reason": "hardship", **fields}


REFUND = f"/admin/transactions/{SOME_ID}/refund"
CASES = [
    Case("refund amount true", "POST", REFUND, "billing.refund.issued", "amount_cents",
         body=refund(amount_cents=True)),
    Case("refund amount as text", "POST", REFUND, "billing.refund.issued", "amount_cents",
         body=refund(amount_cents="100")),
    Case("refund amount past int64", "POST", REFUND, "billing.refund.issued", "amount_cents",
         body=refund(amount_cents=INT64_OVERFLOW)),
    Case("refund note with NUL", "POST", REFUND, "billing.refund.issued", "note",
         body=refund(note="video\x00visit")),
    Case("refund note with a lone surrogate", "POST", REFUND, "billing.refund.issued", "note",
         body=refund(note="half \ud800 a pair")),
    Case("override reason with NUL", "POST", "/admin/overrides", "billing.override.created",
         "reason", body=override(reason="loyal\x00patient")),
    Case("override end overflowing UTC", "POST", "/admin/overrides", "billing.override.created",
         "ends_at", body=override(ends_at=OVERFLOWING_DATETIME)),
    Case("override end without a time zone", "POST", "/admin/overrides",
         "billing.override.created", "ends_at", body=override(ends_at="2030-01-01T00:00:00")),
    Case("override percent past int64", "POST", "/admin/overrides", "billing.override.created",
         "percent_off", body=override(percent_off=INT64_OVERFLOW)),
    Case("override percent as text", "POST", "/admin/overrides", "billing.override.created",
         "percent_off", body=override(percent_off="10")),
    Case("override plan code with a control character", "POST", "/admin/overrides",
         "billing.override.created", "plan_code", body=override(plan_code="basic\x1b[31m")),
    Case("free grant months true", "POST", "/admin/free-grants",
         "billing.free_subscription.granted", "months", body=grant(months=True)),
    Case("free grant plan code with NUL", "POST", "/admin/free-grants",
         "billing.free_subscription.granted", "plan_code", body=grant(plan_code="basic\x00")),
    Case("free grant reason with a lone surrogate", "POST", "/admin/free-grants",
         "billing.free_subscription.granted", "reason", body=grant(reason="hard\udfffship")),
    Case("revoke reason with NUL", "POST", f"/admin/overrides/{SOME_ID}/revoke",
         "billing.override.revoked", "reason", body={"reason": "ended\x00early"}),
    Case("checkout plan code with NUL", "POST", "/billing/checkout", "billing.checkout.created",
         "plan_code", body={**OWNER, "plan_code": "basic_monthly\x00"}),
    Case("cancel at_period_end as 1", "POST", f"/billing/subscriptions/{SOME_ID}/cancel",
         "billing.subscription.cancelled", "at_period_end", body={"at_period_end": 1}),
    Case("cancel reason with NUL", "POST", f"/billing/subscriptions/{SOME_ID}/cancel",
         "billing.subscription.cancelled", "reason", body={"reason": "moving\x00away"}),
    Case("acknowledge note with NUL", "POST", f"/admin/alerts/{SOME_ID}/acknowledge",
         "alerts.acknowledged", "note", body={"note": "handled\x00"}),
    Case("alerts offset past int64", "GET", "/admin/alerts", "alerts.read", "offset",
         params={"offset": str(INT64_OVERFLOW)}),
    Case("alerts since overflowing UTC", "GET", "/admin/alerts", "alerts.read", "since",
         params={"since": OVERFLOWING_DATETIME}),
    Case("alerts kind with NUL", "GET", "/admin/alerts", "alerts.read", "kind",
         params={"kind": "payment\x00"}),
    Case("audit event type with NUL", "GET", "/admin/audit-logs", "audit.read", "event_type",
         params={"event_type": "billing.\x00"}),
    Case("audit actor name with a C1 control", "GET", "/admin/audit-logs", "audit.read",
         "actor_name", params={"actor_name": "Ada\x85Admin"}),
    Case("audit from overflowing UTC", "GET", "/admin/audit-logs", "audit.read", "from",
         params={"from": OVERFLOWING_DATETIME}),
    Case("audit cursor with NUL", "GET", "/admin/audit-logs", "audit.read", "cursor",
         params={"cursor": "abc\x00"}),
    Case("audit limit past int64", "GET", "/admin/audit-logs", "audit.read", "limit",
         params={"limit": str(INT64_OVERFLOW)}),
    Case("export to overflowing UTC", "GET", "/admin/audit-logs/export", "audit.read", "to",
         params={"to": OVERFLOWING_DATETIME}),
]


async def send(client: httpx.AsyncClient, case: Case, headers: dict[str, str]) -> httpx.Response:
    headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    if case.body is None:
        return await client.request(case.method, case.path, params=case.params, headers=headers)
    return await client.request(case.method, case.path, headers={
        **headers, "Content-Type": "application/json"}, content=json.dumps(case.body).encode())


class TestRefusedAtTheBoundary:
    @pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
    async def test_answers_422_naming_the_field_and_stores_nothing(
            self, case: Case, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        before = await business_state(db)
        audited = len(await audit_rows(db))
        response = await send(client, case, factory.headers(people.admin))
        body = await assert_refused(db, response, status=422, error="validation_error",
                                    event=case.event, before=before, audited_before=audited)
        assert any(case.field in problem["loc"] for problem in body["detail"]), body
        row = (await audit_rows(db))[-1]
        assert row.actor_user_id == people.admin.id
        assert case.field in (row.reason or "")

    async def test_amount_true_refunds_nothing_at_stripe(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        before = await business_state(db)
        response = await send(client, Case("", "POST", f"/admin/transactions/{payment.id}/refund",
                                           "", "", body=refund(amount_cents=True)),
                              factory.headers(people.admin))
        await assert_refused(db, response, status=422, error="validation_error",
                             event="billing.refund.issued", before=before)
        charge = await PaymentsGateway(settings).client.v1.charges.retrieve_async(
            payment.stripe_charge_id or "")
        assert charge.amount_refunded == 0


class TestUnstorableKeys:
    @pytest.mark.parametrize("key", ["\\ud800", "a\\u0000b", "\\u202e"])
    async def test_an_unknown_key_that_cannot_be_stored_is_a_safe_422(
            self, key: str, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        before = await business_state(db)
        body = b'{"reason": "long enough", "' + key.encode() + b'": 1}'
        response = await client.post(f"/admin/overrides/{SOME_ID}/revoke", content=body, headers={
            **factory.headers(people.admin), "Content-Type": "application/json"})
        await assert_refused(db, response, status=422, error="validation_error",
                             event="billing.override.revoked", before=before)


class TestCursor:
    @pytest.mark.parametrize("moment", [OVERFLOWING_DATETIME, "2026-01-01T00:00:00"])
    async def test_a_forged_cursor_with_an_unusable_time_is_422_bad_cursor(
            self, moment: str, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        raw = f"{moment}|{uuid.uuid4()}".encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        before = await business_state(db)
        response = await client.get("/admin/audit-logs", params={"cursor": cursor},
                                    headers=factory.headers(people.admin))
        await assert_refused(db, response, status=422, error="bad_cursor", event="audit.read",
                             before=before)


class TestStillAccepted:
    async def test_text_with_newlines_tabs_and_non_latin_letters_is_stored(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People, settings: Settings) -> None:
        await paid_subscription(db, settings, people.owner)  # what the override applies to
        reason = "Patientin\tbat um Nachlass;\nvoir dossier, 患者"
        response = await client.post("/admin/overrides", headers=factory.headers(people.admin),
                                     json=override(owner_id=str(people.patient.id), reason=reason,
                                                   ends_at="2030-06-30T23:00:00-14:00"))
        assert response.status_code == 201, response.text
        assert response.json()["reason"] == reason
        assert response.json()["ends_at"].startswith("2030-07-01T13:00:00")

    async def test_query_integers_and_aware_datetimes_still_parse_from_strings(
            self, client: httpx.AsyncClient, factory: Factory, people: People) -> None:
        response = await client.get("/admin/alerts", headers=factory.headers(people.admin),
                                    params={"limit": "5", "offset": str(INT64_MAX),
                                            "since": "2026-01-01T00:00:00+14:00"})
        assert response.status_code == 200, response.text
        assert response.json()["items"] == [] and response.json()["offset"] == INT64_MAX


class TestTypes:
    @pytest.mark.parametrize(("text", "multiline", "problem"), [
        ("a\x00b", True, "NUL character at position 1"),
        ("\ud83d", True, "lone surrogate U+D83D at position 0"),
        ("line\nbreak", False, "control character U+000A at position 4"),
        ("bell\x07", True, "control character U+0007 at position 4"),
        ("line\nbreak\ttab", True, None),
        ("😀 emoji", False, None),
    ])
    def test_unstorable_names_the_first_problem(self, text: str, multiline: bool,
                                                problem: str | None) -> None:
        assert unstorable(text, multiline=multiline) == problem

    def test_bounded_instant_refuses_the_years_a_conversion_could_overflow(self) -> None:
        from datetime import datetime, timedelta, timezone
        far = timezone(timedelta(hours=-14))
        with pytest.raises(ValueError, match="between the years"):
            bounded_instant(datetime(9999, 12, 31, 23, 59, 59, tzinfo=far))
        with pytest.raises(ValueError, match="between the years"):
            bounded_instant(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))))
        assert bounded_instant(datetime(9998, 12, 31, 23, 0, tzinfo=far)).year == 9999
