"""An unhandled error is a plain 500 in the error envelope, and the connection stays usable.

Served by a real uvicorn, talked to over one kept-alive connection: the database is down (a
SQLite file that cannot be opened, a PostgreSQL port nobody listens on), so reading the token's
user fails with an error no handler knows.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from billwatch.accounts.models import Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.app import create_app
from billwatch.db import Database
from tests.inputs.helpers import local_port, served
from tests.support import free_port
from tests.support import test_settings as make_settings


def unreachable_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'billwatch.db'}"
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/billwatch"


class TestUnhandledError:
    @pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
    async def test_two_requests_on_one_connection_both_get_the_500_envelope(
            self, kind: str, tmp_path: Path) -> None:
        url = unreachable_url(kind, tmp_path)
        settings = make_settings(url, "http://127.0.0.1:9")
        database = Database(url)
        app = create_app(settings, database=database)
        admin = User(id=uuid.uuid4(), email="admin@example.test", name="Ada", role=Role.ADMIN)
        headers = {"Authorization": f"Bearer {mint_token(admin, settings)}"}
        try:
            async with served(app) as base, httpx.AsyncClient(
                    base_url=base, timeout=10,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as http:
                first = await http.get("/me", headers=headers)
                ports = [local_port(first)]
                second = await http.get("/me", headers=headers)
                ports.append(local_port(second))
                health = await http.get("/healthz")
                ports.append(local_port(health))
        finally:
            await database.dispose()
        for response in (first, second):
            assert response.status_code == 500
            assert response.json() == {"error": "internal_error", "detail": "internal error"}
            assert response.headers.get("connection", "").lower() != "close"
            assert response.headers["x-request-id"]
        assert health.status_code == 503
        assert None not in ports and len(set(ports)) == 1, ports  # one connection, kept open
