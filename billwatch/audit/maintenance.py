"""The one maintenance path through the audit tables' append-only triggers.

The triggers (migration ``0200_audit``) refuse UPDATE, DELETE and TRUNCATE on the audit tables,
except inside a transaction that opened this path:

* PostgreSQL: ``SET LOCAL billwatch.maintenance = 'on'`` — transaction-local, so it can never
  leak into a pooled connection's next transaction;
* SQLite: a row in ``audit_maintenance`` inserted at the start and removed before commit.

Even then, an UPDATE of ``audit_logs`` may only change the metadata ciphertext and its key id
(key rotation), never content or hashes; DELETE serves archiving, TRUNCATE the test reset.
The triggers stop mistakes and the application; the application's own role should not even
hold UPDATE/DELETE (README: "Audit trail"). A superuser can bypass triggers, which is why the
chain, the row HMACs and the checkpoints outside the database exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

SETTING = "billwatch.maintenance"


@asynccontextmanager
async def maintenance(target: AsyncSession | AsyncConnection, purpose: str) -> AsyncIterator[None]:
    """Open the maintenance path for the rest of ``target``'s current transaction."""
    if _dialect(target) == "postgresql":
        await target.execute(text(f"SET LOCAL {SETTING} = 'on'"))
        yield
        return
    await target.execute(text("INSERT INTO audit_maintenance (purpose) VALUES (:purpose)"),
                         {"purpose": purpose})
    yield
    await target.execute(text("DELETE FROM audit_maintenance WHERE purpose = :purpose"),
                         {"purpose": purpose})


def _dialect(target: AsyncSession | AsyncConnection) -> str:
    if isinstance(target, AsyncConnection):
        return target.dialect.name
    return target.get_bind().dialect.name
