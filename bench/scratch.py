"""A scratch PostgreSQL database per benchmark run, migrated by billwatch's own migrations."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg

from billwatch.migrations import upgrade

ADMIN_DSN = os.environ.get("BILLWATCH_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
_deferred: ContextVar[list[str] | None] = ContextVar("bench_deferred_drops", default=None)


@dataclass(frozen=True, slots=True)
class ScratchDatabase:
    name: str
    dsn: str
    """For asyncpg (``postgresql://``)."""

    @property
    def url(self) -> str:
        """For billwatch (SQLAlchemy's ``postgresql+asyncpg://``)."""
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@asynccontextmanager
async def scratch_database(label: str, *, keep: bool = False) -> AsyncIterator[ScratchDatabase]:
    """Create, migrate, yield and drop ``billwatch_bench_<label>_<random>``."""
    name = f"billwatch_bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    database = ScratchDatabase(name, f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}")
    try:
        await asyncio.to_thread(upgrade, database.url)
        yield database
    finally:
        if keep:
            pass
        elif (later := _deferred.get()) is not None:
            later.append(name)
        else:
            await _drop([name])


@asynccontextmanager
async def drops_deferred() -> AsyncIterator[None]:
    """Drop the scratch databases made inside only on the way out, one after the other.

    PostgreSQL 15 waits for a checkpoint in every DROP DATABASE, which on a server other work
    keeps busy takes seconds: the wait stays out of the suites' time and comes after the figures.
    """
    names: list[str] = []
    token = _deferred.set(names)
    try:
        yield
    finally:
        _deferred.reset(token)
        await _drop(names)


async def _drop(names: list[str]) -> None:
    if not names:
        return
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
