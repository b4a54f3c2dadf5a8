"""Fixtures: every database test runs on PostgreSQL and on SQLite, against a real Stripe peer."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from billwatch.accounts.models import Role
from billwatch.app import create_app
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from tests.support import (
    Factory,
    LocalStripe,
    People,
    create_pg_database,
    drop_pg_database,
    migrate,
    reset_database,
    test_settings,
)

BACKENDS = [b for b in os.environ.get("BILLWATCH_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    peer = LocalStripe(tmp_path_factory.mktemp("localstripe"))
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
async def catalogue_synced(localstripe: LocalStripe) -> None:
    settings = test_settings("sqlite+aiosqlite://", localstripe.url)
    await PaymentsGateway(settings).ensure_catalogue(settings.plans)


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    name, url = await create_pg_database()
    await migrate(url)
    yield url
    await drop_pg_database(name)


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    await migrate(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "billwatch.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
async def db(database_url: str, backend: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    if backend == "postgresql":
        await reset_database(database)
    yield database
    await database.dispose()


@pytest.fixture
def settings(database_url: str, localstripe: LocalStripe, catalogue_synced: None) -> Settings:
    return test_settings(database_url, localstripe.url)


@pytest.fixture
def app(settings: Settings, db: Database) -> FastAPI:
    return create_app(settings, database=db)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def factory(db: Database, settings: Settings) -> Factory:
    return Factory(db, settings)


@pytest.fixture
async def people(factory: Factory) -> People:
    return People(admin=await factory.user(Role.ADMIN), patient=await factory.user(Role.PATIENT),
                  proxy=await factory.user(Role.PROXY))

@pytest.fixture
async def fresh_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of this backend, for tests that run the migrations themselves."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name, url = await create_pg_database()
    yield url
    await drop_pg_database(name)
