"""A body that is not JSON is a 400 ``malformed_json`` in the error envelope, audited as a 400."""

from __future__ import annotations

import httpx
import pytest

from billwatch.db import Database
from tests.inputs.helpers import assert_refused, business_state
from tests.support import Factory, People

BODIES = [
    pytest.param(b'{"owner_type": "patient", "kind":', "application/json", id="truncated"),
    pytest.param(b"\xff\xfe\x00{", "application/json", id="not-utf8"),
    pytest.param(b"\xc3\x28{}", "application/json", id="invalid-utf8-sequence"),
    pytest.param(b"kind=discount&reason=loyal", "application/x-www-form-urlencoded", id="form"),
    pytest.param(b"discount please", "text/plain", id="plain-text"),
]


class TestMalformedJson:
    @pytest.mark.parametrize(("body", "content_type"), BODIES)
    async def test_is_400_malformed_json_with_one_failure_row(
            self, body: bytes, content_type: str, client: httpx.AsyncClient, db: Database,
            factory: Factory, people: People) -> None:
        before = await business_state(db)
        response = await client.post("/admin/overrides", content=body, headers={
            **factory.headers(people.admin), "Content-Type": content_type})
        refused = await assert_refused(db, response, status=400, error="malformed_json",
                                       event="billing.override.created", before=before)
        assert "JSON" in refused["detail"]

    async def test_json_that_is_not_an_object_stays_a_validation_error(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            people: People) -> None:
        before = await business_state(db)
        response = await client.post("/admin/overrides", json=["discount"],
                                     headers=factory.headers(people.admin))
        await assert_refused(db, response, status=422, error="validation_error",
                             event="billing.override.created", before=before)
