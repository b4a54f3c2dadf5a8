from __future__ import annotations

import httpx

from billwatch.accounts.models import Role
from tests.support import Factory


async def test_healthz_and_me(client: httpx.AsyncClient, factory: Factory) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
    patient = await factory.user(Role.PATIENT)
    me = await client.get("/me", headers=factory.headers(patient))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == patient.email
