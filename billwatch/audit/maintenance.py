"""The one maintenance path through the audit tables' append-only triggers.

The triggers (migration ``0200_audit``) refuse UPDATE, DELETE and TRUNCATE on the audit tables,
except inside a transaction that opened this path:

* PostgreSQL: ``SELECT billwatch_audit_open_maintenance(purpose)`` — a ``SECURITY DEFINER``
  function owned by the role that migrated, EXECUTE revoked from PUBLIC (migration
  ``0210_audit_integrity``). It records the current transaction id in
  ``audit_maintenance_windows``, a table only that owner writes, and the guard looks for exactly
  that id: no setting a session could set opens anything, and a window can never outlive or
  leak out of its transaction (ids are never reused);
* SQLite: a row in ``audit_maintenance`` inserted at the start and removed before commit.

Even then, an UPDATE of ``audit_logs`` may only change the metadata ciphertext and its key id
(key rotation), never content or hashes; DELETE serves archiving and the test reset.
The triggers stop mistakes and the application; the application's own role should not even
hold UPDATE/DELETE (README: "Audit trail"). A superuser can bypass triggers, which is why the
chain, the row HMACs and the checkpoints outside the database exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

OPEN_FUNCTION = "billwatch_audit_open_maintenance"
CLOSE_FUNCTION = "billwatch_audit_close_maintenance"


@asynccontextmanager
async def maintenance(target: AsyncSession | AsyncConnection, purpose: str) -> AsyncIterator[None]:
    """Open the maintenance path for the rest of ``target``'s current transaction."""
    if _dialect(target) == "postgresql":
        await target.execute(text(f"SELECT {OPEN_FUNCTION}(:purpose)"), {"purpose": purpose})
        yield
        await target.execute(text(f"SELECT {CLOSE_FUNCTION}()"))
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
