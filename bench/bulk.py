"""Bulk loading with PostgreSQL's COPY (asyncpg's binary protocol), in chunks, with a progress bar.

Millions of rows through the ORM would take longer than the benchmarks themselves; COPY loads
them at disk speed. As for any bulk load, the table's plain (non-unique) indexes are dropped
for the load and rebuilt from their own definitions afterwards, and foreign-key triggers are
skipped for the loading session (the generators produce consistent rows); primary keys and
unique constraints stay and are checked. What is measured afterwards meets the same schema.
The column lists are checked against the live schema first, so a migration that adds a
required column makes the benchmark fail with the column's name, not a COPY error. A table that
is range-partitioned gets a partition for each month of the rows that no partition covers yet
(the scheduler creates only the months ahead), so the same loader serves either schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

CHUNK = 50_000


async def required_columns(conn: asyncpg.Connection, table: str) -> set[str]:
    """Columns that need a value from us: NOT NULL and without a server default."""
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
        "AND is_nullable = 'NO' AND column_default IS NULL", table)
    return {row["column_name"] for row in rows}


async def check_columns(conn: asyncpg.Connection, table: str, columns: Sequence[str]) -> None:
    missing = await required_columns(conn, table) - set(columns)
    if missing:
        raise RuntimeError(f"bench loader for {table} lacks required columns: {sorted(missing)}")


def _chunks(records: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _month_after(month: datetime) -> datetime:
    return month.replace(year=month.year + 1, month=1) if month.month == 12 else \
        month.replace(month=month.month + 1)


async def cover_months(conn: asyncpg.Connection, table: str, first: datetime,
                       last: datetime) -> list[str]:
    """On a range-partitioned ``table``, create monthly partitions for ``first``..``last`` where
    none covers the month yet; returns their names (none for a plain table)."""
    key = await conn.fetchval("SELECT pg_get_partkeydef(oid) FROM pg_class "
                              "WHERE relname = $1 AND relkind = 'p'", table)
    if key is None:
        return []
    if not key.startswith("RANGE ("):
        raise RuntimeError(f"bench loader for {table}: cannot load into a {key} partitioning")
    created = []
    month = first.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while month <= last:
        following = _month_after(month)
        name = f"{table}_bench_{month:%Y_%m}"
        try:
            async with conn.transaction():
                await conn.execute(f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES '
                                   f"FROM ('{month.isoformat()}') TO ('{following.isoformat()}')")
            created.append(name)
        except asyncpg.InvalidObjectDefinitionError:
            pass  # a partition of the schema's own already covers (part of) this month
        month = following
    return created


@asynccontextmanager
async def bulk_load_mode(conn: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    """Drop ``table``'s plain indexes and skip FK triggers; rebuild the indexes on the way out."""
    indexes = await conn.fetch(
        "SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "WHERE t.relname = $1 AND NOT x.indisprimary AND NOT x.indisunique", table)
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["name"]}"')
    try:
        yield
    finally:
        for index in indexes:
            # a partitioned table's index prints as ``ON ONLY``, which would build no partition's
            await conn.execute(index["definition"].replace(" ON ONLY ", " ON ", 1))
        await conn.execute("RESET session_replication_role")


async def copy(conn: asyncpg.Connection, table: str, columns: Sequence[str],
               records: Iterable[tuple[Any, ...]], total: int, console: Console) -> None:
    """COPY ``total`` records into ``table`` (the caller sizes ``records`` to match)."""
    await check_columns(conn, table, columns)
    async with bulk_load_mode(conn, table):
        await _copy_chunks(conn, table, columns, records, total, console)


async def _copy_chunks(conn: asyncpg.Connection, table: str, columns: Sequence[str],
                       records: Iterable[tuple[Any, ...]], total: int, console: Console) -> None:
    with Progress("  [progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"COPY {table}", total=total)
        for chunk in _chunks(records, CHUNK):
            await conn.copy_records_to_table(table, records=chunk, columns=list(columns))
            progress.advance(task, len(chunk))
