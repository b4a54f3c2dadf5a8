"""Tokens carry a jti and a bounded lifetime, and a revoked one is a 401 on its next request."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import pytest
from pydantic import ValidationError

from billwatch.accounts.models import RevokedToken, Role
from billwatch.accounts.tokens import mint_token, read_token, revoke_token, revoke_user_tokens
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.errors import Unprocessable
from tests.support import TEST_TOKEN_SECRET, Factory, count
from tests.support import test_settings as make_settings


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestClaims:
    async def test_every_token_has_its_own_jti_and_an_issue_time(
            self, factory: Factory, settings: Settings) -> None:
        user = await factory.user(Role.PATIENT)
        first, second = mint_token(user, settings), mint_token(user, settings)
        claims = [jwt.decode(t, TEST_TOKEN_SECRET, algorithms=["HS256"], audience="billwatch")
                  for t in (first, second)]
        assert claims[0]["jti"] != claims[1]["jti"] and len(claims[0]["jti"]) == 32
        assert read_token(first, settings).jti == claims[0]["jti"]
        assert claims[0]["exp"] - claims[0]["iat"] == pytest.approx(settings.token_ttl_seconds, 1)

    async def test_a_token_without_jti_is_invalid(self, client: httpx.AsyncClient,
                                                 factory: Factory) -> None:
        user = await factory.user(Role.PATIENT)
        legacy = jwt.encode({"sub": str(user.id), "role": "patient", "aud": "billwatch",
                             "iat": 1, "exp": 4102444800}, TEST_TOKEN_SECRET, "HS256")
        response = await client.get("/me", headers=bearer(legacy))
        assert response.status_code == 401 and response.json()["error"] == "invalid_token"


class TestMaximumLifetime:
    async def test_minting_refuses_more_than_the_maximum(self, factory: Factory,
                                                         settings: Settings) -> None:
        user = await factory.user(Role.PATIENT)
        longest = mint_token(user, settings, ttl_seconds=settings.token_max_ttl_seconds)
        claims = read_token(longest, settings)
        assert (claims.expires_at - claims.issued_at).total_seconds() == pytest.approx(
            settings.token_max_ttl_seconds, abs=1)
        for too_long in (settings.token_max_ttl_seconds + 1, 10 * 365 * 86400, 0, -5):
            with pytest.raises(Unprocessable) as refused:
                mint_token(user, settings, ttl_seconds=too_long)
            assert refused.value.code == "token_ttl_too_long"
            assert "BILLWATCH_TOKEN_MAX_TTL_SECONDS" in refused.value.detail

    def test_the_default_lifetime_may_not_exceed_the_maximum(self) -> None:
        with pytest.raises(ValidationError, match="token_max_ttl_seconds"):
            make_settings("sqlite+aiosqlite://", "http://127.0.0.1:9",
                          token_ttl_seconds=7200, token_max_ttl_seconds=3600)


class TestRevocation:
    async def test_a_revoked_token_is_401_and_the_users_others_still_work(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            settings: Settings) -> None:
        user = await factory.user(Role.ADMIN)
        revoked, kept = mint_token(user, settings), mint_token(user, settings)
        assert (await client.get("/admin/audit-logs", headers=bearer(revoked))).status_code == 200
        async with db.unit_of_work() as session:
            await revoke_token(session, read_token(revoked, settings).jti, settings)
        for path in ("/me", "/admin/audit-logs"):
            response = await client.get(path, headers=bearer(revoked))
            assert response.status_code == 401, path
            assert response.json() == {"error": "token_revoked", "detail": "token revoked"}
        assert (await client.get("/me", headers=bearer(kept))).status_code == 200

    async def test_revoking_twice_keeps_one_row_and_expired_rows_are_pruned(
            self, db: Database, factory: Factory, settings: Settings) -> None:
        user = await factory.user(Role.PATIENT)
        jti = read_token(mint_token(user, settings), settings).jti
        async with db.unit_of_work() as session:
            session.add(RevokedToken(jti="long-gone", revoked_at=datetime(2020, 1, 1, tzinfo=UTC),
                                     expires_at=datetime(2020, 1, 8, tzinfo=UTC)))
        for _ in range(2):
            async with db.unit_of_work() as session:
                await revoke_token(session, jti, settings)
        async with db.sessionmaker() as session:
            assert await session.get(RevokedToken, "long-gone") is None
            assert await session.get(RevokedToken, jti) is not None
        assert await count(db, RevokedToken) == 1

    async def test_revoking_a_user_refuses_every_earlier_token_not_later_ones(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            settings: Settings) -> None:
        user, other = await factory.user(Role.PATIENT), await factory.user(Role.PATIENT)
        earlier = [mint_token(user, settings) for _ in range(2)]
        bystander = mint_token(other, settings)
        async with db.unit_of_work() as session:
            await revoke_user_tokens(session, user)
        later = mint_token(user, settings)
        for token in earlier:
            response = await client.get("/me", headers=bearer(token))
            assert response.status_code == 401 and response.json()["error"] == "token_revoked"
        assert (await client.get("/me", headers=bearer(later))).status_code == 200
        assert (await client.get("/me", headers=bearer(bystander))).status_code == 200

    async def test_a_revoked_token_cannot_reach_a_billing_route(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            settings: Settings) -> None:
        patient = await factory.user(Role.PATIENT)
        token = mint_token(patient, settings)
        async with db.unit_of_work() as session:
            await revoke_user_tokens(session, patient)
        response = await client.post("/billing/checkout", headers=bearer(token), json={
            "owner_type": "patient", "owner_id": str(patient.id), "plan_code": "basic_monthly"})
        assert response.status_code == 401 and response.json()["error"] == "token_revoked"


def cli(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    env.update({"BILLWATCH_ENV": "development", "BILLWATCH_DATABASE_URL": database_url,
                "BILLWATCH_TOKEN_SECRET": TEST_TOKEN_SECRET, "BILLWATCH_LOG_LEVEL": "WARNING",
                "BILLWATCH_TOKEN_MAX_TTL_SECONDS": "86400"})
    return subprocess.run([str(Path(sys.executable).parent / "billwatch"), *args], env=env,
                          capture_output=True, text=True, timeout=90, check=False)


class TestCommandLine:
    async def test_token_revoke_by_jti_and_by_user(
            self, client: httpx.AsyncClient, db: Database, factory: Factory,
            database_url: str) -> None:
        admin = await factory.user(Role.ADMIN)
        minted = [cli(["token", admin.email], database_url) for _ in range(3)]
        assert all(m.returncode == 0 for m in minted), minted[0].stderr
        tokens = [m.stdout.strip() for m in minted]
        jti = jwt.decode(tokens[0], options={"verify_signature": False})["jti"]
        assert f"token jti {jti}" in minted[0].stderr  # how the operator learns what to revoke

        by_jti = cli(["token", "revoke", jti], database_url)
        assert by_jti.returncode == 0 and f"token {jti} revoked" in by_jti.stdout, by_jti.stderr
        assert (await client.get("/me", headers=bearer(tokens[0]))).status_code == 401
        assert (await client.get("/me", headers=bearer(tokens[1]))).status_code == 200

        by_user = cli(["token", "revoke", "--user", admin.email.upper()], database_url)
        assert by_user.returncode == 0, by_user.stderr
        for token in tokens[1:]:
            response = await client.get("/me", headers=bearer(token))
            assert response.status_code == 401 and response.json()["error"] == "token_revoked"

        assert cli(["token", "revoke", "--user", "nobody@example.test"], database_url
                   ).returncode == 1
        assert cli(["token", "revoke"], database_url).returncode != 0
        bad_jti = cli(["token", "revoke", "not a jti\n"], database_url)
        assert bad_jti.returncode == 1 and "jti" in bad_jti.stderr

    async def test_ttl_above_the_maximum_is_refused(self, db: Database, factory: Factory,
                                                    database_url: str) -> None:
        admin = await factory.user(Role.ADMIN)
        refused = cli(["token", admin.email, "--ttl", "86401"], database_url)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "BILLWATCH_TOKEN_MAX_TTL_SECONDS" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert cli(["token", admin.email, "--ttl", "86400"], database_url).returncode == 0
