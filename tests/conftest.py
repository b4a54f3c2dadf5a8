"""Fixtures: every database test runs on PostgreSQL and on SQLite, against a real Stripe peer."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import settings as hypothesis_settings

from billwatch.accounts.models import Role
from billwatch.app import create_app
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from billwatch.runtime import Runtime
from tests.support import (
    Factory,
    HangingStripe,
    LocalStripe,
    People,
    create_pg_database,
    drop_pg_database,
    migrate,
    reset_database,
    test_settings,
)

BACKENDS = [b for b in os.environ.get("BILLWATCH_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]

SLOW: dict[str, str] = {
    # path, or path::Class, or path::Class::test (without parameters): what makes it slow
    "tests/demo/test_demo.py": "the whole demo: localstripe, billwatch serve, a simulated month",
    "tests/bench/test_bench.py": "every benchmark suite at smoke size, in a subprocess",
    "tests/metrics/test_prometheus_e2e.py": "a real Prometheus scraping billwatch serve",
    "tests/metrics/test_multiprocess.py": "billwatch serve with two worker processes",
    "tests/jobs/test_celery.py": "real Celery workers (subprocesses) on Redis",
    "tests/billing/test_expiry.py::TestThroughCeleryWorkers": "real Celery workers",
    "tests/console": "Chromium driving the served console",
    "tests/jobs/test_idempotency_prune.py::TestCeleryWorker": "a real Celery worker",
    "tests/jobs/test_seal_interval.py::TestTheWorkerSeals": "a real Celery worker and its beat slot",
    "tests/webhooks/test_processors.py::TestCelery": "a real Celery worker draining the inbox",
    "tests/webhooks/test_processors.py::TestKilledWorker": "real workers, one SIGKILLed mid-batch",
    "tests/alerts/test_smtp.py::TestSlowServer::test_a_server_that_answers_data_late_gets_at_most_two_copies":
        "waits out real SMTP timeouts",
    # The billwatch command in subprocesses: each one is a Python start and a full import.
    "tests/accounts/test_revocation.py::TestCommandLine": "eight CLI subprocesses",
    "tests/accounts/test_tokens.py::test_cli_migrates_creates_a_user_and_mints_a_token_the_api_accepts":
        "CLI subprocesses, migrations included",
    "tests/test_startup.py::TestProcesses": "a CLI subprocess per case",
    "tests/test_cli_input.py::TestTheCommand": "a CLI subprocess per case",
    "tests/jobs/test_cli.py": "CLI subprocesses, a month of jobs",
    "tests/audit/test_cli.py": "CLI subprocesses over thousands of audit rows",
    "tests/audit/test_anchors.py::TestCommandLine": "CLI subprocesses and an anchor server",
    "tests/audit/test_canary_corpus.py": "canaries through every path, CLI subprocesses included",
    # Their in-process twins (the same rendering compared with the committed files) stay quick.
    "tests/docs/test_reference.py::TestCommittedPagesAreCurrent::test_the_command_writes_the_pages_and_check_names_the_stale_ones":
        "three CLI subprocesses",
    "tests/deploy/test_prometheus_rules_render.py::TestCommittedFile::test_the_command_checks_and_writes":
        "three CLI subprocesses",
    "tests/deploy/test_prometheus_rules_render.py::TestCommittedFile::test_the_command_renders_this_installation_s_settings":
        "a CLI subprocess",
}
"""Tests marked ``slow`` (``make check`` skips them, ``make test`` runs them), each with its reason."""



# Hypothesis's per-example deadline (200 ms) times the machine, not the code: with two workers
# on two shared cores one example of the redaction property took 408 ms, then 0.4 ms when
# replayed, and failed a healthy run. pytest-timeout still bounds every test.
hypothesis_settings.register_profile("billwatch", deadline=None)
hypothesis_settings.load_profile("billwatch")

TERMINAL_ENV = ("COLUMNS", "LINES")


def pytest_configure_node(node: Any) -> None:
    """Hand each xdist worker the terminal size variables this run started with (or their absence)."""
    node.workerinput["terminal_env"] = {name: os.environ.get(name) for name in TERMINAL_ENV}


def pytest_configure(config: pytest.Config) -> None:
    """Give a worker the terminal size variables of the run, before any test module is imported.

    An xdist worker starts with ``COLUMNS=80`` even when the run had none, and a Rich console
    created at import fixes its width from it: a test that widens the terminal for one command
    (``COLUMNS=250``) then gets its table cut to 80 columns, under xdist only.
    """
    started_with: dict[str, str | None] = getattr(config, "workerinput", {}).get("terminal_env", {})
    for name, value in started_with.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests named in ``SLOW``, so the marker and its reasons sit in one list."""
    for item in items:
        path = item.path.relative_to(config.rootpath).as_posix()
        plain = f"{path}::{item.nodeid.split('::', 1)[1].split('[', 1)[0]}" if "::" in item.nodeid else path
        if any(plain == key or plain.startswith((f"{key}::", f"{key}/")) for key in SLOW):
            item.add_marker(pytest.mark.slow)


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
def runtime(settings: Settings) -> Runtime:
    """The runtime the test's database and app carry, as one process's would: the settings'."""
    return build_runtime(settings)


@pytest.fixture
async def db(database_url: str, backend: str, runtime: Runtime) -> AsyncIterator[Database]:
    database = Database(database_url, runtime=runtime)
    if backend == "postgresql":
        await reset_database(database)
    yield database
    await database.dispose()


@pytest.fixture
def settings(database_url: str, localstripe: LocalStripe, catalogue_synced: None) -> Settings:
    return test_settings(database_url, localstripe.url)


@pytest.fixture
def app(settings: Settings, db: Database, runtime: Runtime) -> FastAPI:
    return create_app(settings, database=db, runtime=runtime)


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


@pytest.fixture(scope="session")
async def pg_template() -> AsyncIterator[str]:
    """A migrated PostgreSQL database no test connects to, copied by ``fresh_migrated_url``."""
    name, url = await create_pg_database()
    await migrate(url)
    yield name
    await drop_pg_database(name)


@pytest.fixture
def migrated_template(backend: str, request: pytest.FixtureRequest) -> str:
    """This backend's migrated template: the SQLite file's path, or the PostgreSQL database's name.

    Looked up here, in a plain fixture: an async fixture cannot ask for a session fixture that
    is not built yet (pytest-asyncio would have to start the loop it is running in).
    """
    return str(request.getfixturevalue("sqlite_template" if backend == "sqlite" else "pg_template"))


@pytest.fixture
async def fresh_migrated_url(backend: str, tmp_path: Path, migrated_template: str) -> AsyncIterator[str]:
    """A migrated database of this backend that is the test's alone (it may change the schema).

    A copy of a template migrated once per worker: cheaper than migrating an empty database.
    """
    if backend == "sqlite":
        target = tmp_path / "fresh-migrated.db"
        shutil.copyfile(migrated_template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    name, url = await create_pg_database(template=migrated_template)
    yield url
    await drop_pg_database(name)


@pytest.fixture
async def hanging() -> AsyncIterator[HangingStripe]:
    peer = HangingStripe()
    yield peer
    await peer.stop()
