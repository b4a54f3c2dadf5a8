"""Bearer tokens: what a valid one carries, and the 401 reasons of the rest."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import jwt

from billwatch.accounts.models import Role
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from tests.support import TEST_TOKEN_SECRET, Factory, audit_rows


class TestTokens:
    async def test_missing_bad_and_expired_tokens_are_401(
            self, client: httpx.AsyncClient, factory: Factory, settings: Settings) -> None:
        patient = await factory.user(Role.PATIENT)
        assert (await client.get("/me")).json()["error"] == "missing_token"
        garbage = await client.get("/me", headers={"Authorization": "Bearer nonsense"})
        assert garbage.status_code == 401 and garbage.json()["error"] == "invalid_token"
        expired = jwt.encode({"sub": str(patient.id), "role": "patient", "aud": "billwatch",
                              "jti": "expired-1", "iat": utcnow() - timedelta(hours=1),
                              "exp": utcnow() - timedelta(seconds=5)}, TEST_TOKEN_SECRET, "HS256")
        response = await client.get("/me", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401 and response.json()["error"] == "token_expired"
        forged = jwt.encode({"sub": str(patient.id), "role": "admin", "aud": "billwatch",
                             "jti": "forged-1", "iat": utcnow(),
                             "exp": utcnow() + timedelta(hours=1)},
                            "another-secret-of-32-bytes-or-more!", "HS256")
        response = await client.get("/me", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401

    async def test_a_token_claiming_another_role_is_refused(
            self, client: httpx.AsyncClient, factory: Factory) -> None:
        patient = await factory.user(Role.PATIENT)
        elevated = jwt.encode({"sub": str(patient.id), "role": "admin", "aud": "billwatch",
                               "jti": "elevated-1", "iat": utcnow(),
                               "exp": utcnow() + timedelta(hours=1)}, TEST_TOKEN_SECRET, "HS256")
        response = await client.get("/me", headers={"Authorization": f"Bearer {elevated}"})
        assert response.status_code == 401 and response.json()["error"] == "unknown_user"

    async def test_request_id_is_echoed_and_recorded(
            self, client: httpx.AsyncClient, db: Database, factory: Factory) -> None:
        patient = await factory.user(Role.PATIENT)
        response = await client.get(f"/billing/owners/patient/{patient.id}",
                                    headers={**factory.headers(patient), "X-Request-ID": "req-42"})
        assert response.headers["x-request-id"] == "req-42"
        [row] = await audit_rows(db)
        assert row.request_id == "req-42" and row.client_ip == "203.0.113.7"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "billwatch")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


async def test_cli_migrates_creates_a_user_and_mints_a_token_the_api_accepts(
        tmp_path: Path, localstripe) -> None:  # type: ignore[no-untyped-def]
    import os

    from billwatch.app import create_app
    from tests.support import test_settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "BILLWATCH_ENV": "development", "BILLWATCH_DATABASE_URL": url,
           "BILLWATCH_TOKEN_SECRET": TEST_TOKEN_SECRET}
    assert _cli(["migrate"], env).returncode == 0
    created = _cli(["users", "create", "ada@example.test", "--name", "Ada", "--role", "admin"], env)
    assert created.returncode == 0, created.stderr
    minted = _cli(["token", "ada@example.test"], env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    unknown = _cli(["token", "nobody@example.test"], env)
    assert unknown.returncode == 1

    db = Database(url)
    app = create_app(test_settings(url, localstripe.url), database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as http:
        me = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
    await db.dispose()
    assert me.status_code == 200 and me.json()["role"] == "admin"


async def test_healthz_is_503_when_the_database_is_unreachable(localstripe) -> None:  # type: ignore[no-untyped-def]
    from billwatch.app import create_app
    from tests.support import free_port, test_settings

    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    db = Database(url)
    app = create_app(test_settings(url, localstripe.url), database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as http:
        response = await http.get("/healthz")
    await db.dispose()
    assert response.status_code == 503 and response.json()["database"] == "unreachable"
