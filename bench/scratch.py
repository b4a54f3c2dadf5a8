"""A scratch PostgreSQL database per benchmark run, migrated by billwatch's own migrations."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from billwatch.migrations import upgrade

ADMIN_DSN = os.environ.get("BILLWATCH_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


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
        if not keep:
            admin = await asyncpg.connect(ADMIN_DSN)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
