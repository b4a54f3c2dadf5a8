"""Monthly partitions of ``audit_logs`` on PostgreSQL, made ahead so no insert ever waits for one.

The table is range-partitioned on ``occurred_at`` (migration ``0610_audit_partitions``), one
partition a month (``audit_logs_YYYY_MM``) plus a DEFAULT partition. The default partition is
the answer to "a row whose month has no partition": PostgreSQL stores it there, in the same
insert, so a row dated far ahead (or in a month already archived) is never refused and never
lost, and it needs no privilege the service role lacks. Creating a partition on demand instead
would fail the business transaction that wrote the row (the partition would have to be made,
by its owner, before that insert could be retried).

:func:`ensure_partitions` calls the owner's ``SECURITY DEFINER`` function, which makes this
month and ``BILLWATCH_AUDIT_PARTITIONS_AHEAD`` more, moving any of their rows out of the default
partition unchanged; the scheduler runs it daily and ``billwatch migrate`` after every upgrade.
SQLite keeps one table: these functions do nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billwatch.db import Database, utcnow

ENSURE_FUNCTION = "billwatch_audit_ensure_partitions"
LOCK_TIMEOUT = "10s"

PARTITIONS_SQL = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(current_schema() || '.audit_logs')
ORDER BY c.relname
"""


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month in UTC: the span of one partition."""

    year: int
    month: int

    @classmethod
    def parse(cls, value: str) -> Month:
        """``YYYY-MM``; ValueError otherwise."""
        moment = datetime.strptime(value, "%Y-%m")
        return cls(moment.year, moment.month)

    @classmethod
    def of(cls, moment: datetime | date) -> Month:
        return cls(moment.year, moment.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant of the next month (exclusive bound)."""
        return self.plus(1).start

    def plus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def partition(self) -> str:
        return f"audit_logs_{self.year:04d}_{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


async def ensure_partitions(db: Database, *, ahead: int, first: Month | None = None,
                            now: datetime | None = None) -> list[str]:
    """Create the partitions of ``first`` (default: this month) and ``ahead`` months after it.

    Returns the names created (none when all exist, always none on SQLite).
    """
    if db.dialect != "postgresql":
        return []
    first = first or Month.of((now or utcnow()).astimezone(UTC))
    async with db.unit_of_work() as session:
        # attaching briefly locks the DEFAULT partition: give up rather than stall the trail
        await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        created = (await session.execute(
            text(f"SELECT {ENSURE_FUNCTION}(CAST(:month AS date), :ahead)"),
            {"month": first.start.date(), "ahead": ahead})).scalar_one()
    return list(created or [])


async def partitions(conn: AsyncConnection) -> dict[str, str]:
    """Every partition of ``audit_logs`` and its bound (PostgreSQL; empty on SQLite)."""
    if conn.dialect.name != "postgresql":
        return {}
    return {str(name): str(bound) for name, bound in (await conn.execute(text(PARTITIONS_SQL))).all()}
