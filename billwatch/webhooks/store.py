"""Reads and writes of the ``stripe_events`` table, race-safe on PostgreSQL and SQLite.

Claiming an event is the first statement of its transaction: ``INSERT ... ON CONFLICT DO
NOTHING``. On PostgreSQL a second worker inserting the same id waits on the unique index until
the first commits or rolls back, then either sees the finished row (a duplicate) or claims the id
itself. An existing row is locked with ``SELECT ... FOR UPDATE``. On SQLite the insert takes the
database's single write lock, which serialises the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.db import utcnow
from billwatch.webhooks.models import EventSource, EventStatus, StripeEvent
from billwatch.webhooks.shapes import ref, timestamp

MAX_ERROR_CHARS = 2000
EVENTS = cast(Table, StripeEvent.__table__)
"""Writes go through the table (Core), which skips the ORM's bulk machinery on the hot path."""


@dataclass(frozen=True, slots=True)
class Claim:
    row_id: uuid.UUID
    status: EventStatus
    attempts: int
    inserted: bool


def dialect_insert(session: AsyncSession) -> Any:
    """The ``insert`` of the session's dialect, which has ``on_conflict_do_*``."""
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


@lru_cache(maxsize=16)
def insert_once_statement(dialect: str, table: Table, unique_column: str) -> Any:
    """``INSERT ... ON CONFLICT (unique_column) DO NOTHING RETURNING id``, built once per dialect.

    Executed with a parameter dict, so the hot path neither rebuilds nor re-coerces a statement
    per event (SQLAlchemy caches its compiled form).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=[unique_column]).returning(table.c.id)


_FINISH = update(EVENTS).where(EVENTS.c.id == bindparam("event_row_id"))


def _row_values(event: dict[str, Any], payload: dict[str, Any], source: EventSource) -> dict[str, Any]:
    obj = event["data"]["object"]
    return {
        "id": uuid.uuid4(), "stripe_event_id": event["id"], "type": event["type"],
        "stripe_created": timestamp(event["created"]) or utcnow(), "object_id": ref(obj.get("id")),
        "livemode": bool(event.get("livemode")), "payload": payload, "source": source,
        "attempts": 0, "received_at": utcnow(),
    }


async def claim(session: AsyncSession, event: dict[str, Any], payload: dict[str, Any],
                source: EventSource) -> Claim:
    """Store the event if new, or lock its row; either way the caller holds it until commit."""
    values = {**_row_values(event, payload, source), "status": EventStatus.RECEIVED}
    statement = insert_once_statement(session.get_bind().dialect.name, EVENTS, "stripe_event_id")
    inserted = (await session.execute(statement, values)).scalar_one_or_none()
    if inserted is not None:
        return Claim(inserted, EventStatus.RECEIVED, 0, True)
    row = (await session.execute(
        select(StripeEvent.id, StripeEvent.status, StripeEvent.attempts)
        .where(StripeEvent.stripe_event_id == event["id"]).with_for_update())).one()
    return Claim(row.id, row.status, row.attempts, False)


async def finish(session: AsyncSession, claim: Claim, *, status: EventStatus, note: str | None,
                 processing_ms: float) -> None:
    await session.execute(_FINISH, {
        "event_row_id": claim.row_id, "status": status, "attempts": claim.attempts + 1,
        "processed_at": utcnow(), "processing_ms": round(processing_ms, 3),
        "last_error": note if status is EventStatus.IGNORED else None})


async def mark_failed(session: AsyncSession, event: dict[str, Any], payload: dict[str, Any],
                      source: EventSource, error: str) -> tuple[uuid.UUID, int] | None:
    """Record a failed attempt (storing the event if its claim rolled back with the handler).

    Returns the row id and attempt count, or None when another worker finished the event in
    the meantime (its outcome stands; a stale failure must not overwrite it).
    """
    values = _row_values(event, payload, source)
    error = error[:MAX_ERROR_CHARS]
    statement = dialect_insert(session)(EVENTS).values(
        status=EventStatus.FAILED, last_error=error, processed_at=None, **{**values, "attempts": 1})
    statement = statement.on_conflict_do_update(
        index_elements=["stripe_event_id"],
        set_={"status": EventStatus.FAILED, "attempts": EVENTS.c.attempts + 1,
              "last_error": error},
        where=EVENTS.c.status.in_((EventStatus.RECEIVED, EventStatus.FAILED, EventStatus.IGNORED)),
    ).returning(EVENTS.c.id, EVENTS.c.attempts)
    row = (await session.execute(statement)).first()
    return (row.id, row.attempts) if row is not None else None


async def get(session: AsyncSession, stripe_event_id: str) -> StripeEvent | None:
    result = await session.scalars(select(StripeEvent).where(StripeEvent.stripe_event_id == stripe_event_id))
    return result.first()


async def list_events(session: AsyncSession, *, status: EventStatus | None = None,
                      type_prefix: str | None = None, limit: int = 50) -> Sequence[StripeEvent]:
    """Newest first, optionally one status and/or a type prefix (``invoice.``)."""
    query = select(StripeEvent).order_by(StripeEvent.received_at.desc()).limit(limit)
    if status is not None:
        query = query.where(StripeEvent.status == status)
    if type_prefix:
        query = query.where(StripeEvent.type.startswith(type_prefix, autoescape=True))
    return (await session.scalars(query)).all()


async def failed_event_ids(session: AsyncSession, *, limit: int = 1000) -> list[str]:
    """Failed events, oldest Stripe time first, so a replay applies them in order."""
    result = await session.scalars(
        select(StripeEvent.stripe_event_id).where(StripeEvent.status == EventStatus.FAILED)
        .order_by(StripeEvent.stripe_created, StripeEvent.received_at).limit(limit))
    return list(result.all())


async def known_ids(session: AsyncSession, ids: Iterable[str]) -> set[str]:
    wanted = list(ids)
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        found.update((await session.scalars(
            select(StripeEvent.stripe_event_id).where(StripeEvent.stripe_event_id.in_(chunk)))).all())
    return found

