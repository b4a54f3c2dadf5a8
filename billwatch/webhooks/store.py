"""Reads and writes of the ``stripe_events`` table, race-safe on PostgreSQL and SQLite.

Storing an event is one ``INSERT ... ON CONFLICT DO NOTHING``: a second delivery of the same
id inserts nothing. Processors claim stored events with a lease in a short transaction of its
own (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so processors never wait on each other; on SQLite
every write transaction begins IMMEDIATE, which serialises claims the same way). Each event is
then handled in a transaction that first locks its row and checks the claim is still the
processor's: a processor whose lease lapsed and was taken over changes nothing, so an event is
applied once however many processors die or overlap.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch.db import utcnow
from billwatch.webhooks.models import (
    UNFINISHED,
    AttemptOutcome,
    EventSource,
    EventStatus,
    StripeEvent,
    StripeEventAttempt,
)
from billwatch.webhooks.shapes import ref, timestamp

MAX_ERROR_CHARS = 2000
EVENTS = cast(Table, StripeEvent.__table__)
"""Writes go through the table (Core), which skips the ORM's bulk machinery on the hot path."""
ATTEMPTS = cast(Table, StripeEventAttempt.__table__)
LEASE_LAPSED = "the processor's lease lapsed before it finished (killed or stuck); nothing committed"


@dataclass(frozen=True, slots=True)
class Claimed:
    """An event a processor holds under its lease, with what it needs to handle it."""

    row_id: uuid.UUID
    stripe_event_id: str
    type: str
    attempt: int
    """The number of this attempt (1 for the first)."""
    payload: dict[str, Any]
    claimed_at: datetime


@lru_cache(maxsize=16)
def insert_once_statement(dialect: str, table: Table, unique_column: str) -> Any:
    """``INSERT ... ON CONFLICT (unique_column) DO NOTHING RETURNING id``, built once per dialect.

    Executed with a parameter dict, so the hot path neither rebuilds nor re-coerces a statement
    per event (SQLAlchemy caches its compiled form).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=[unique_column]).returning(table.c.id)


def payload_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of the stored payload as canonical JSON: what stays once the payload is pruned."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def store(session: AsyncSession, event: dict[str, Any], payload: dict[str, Any],
                source: EventSource) -> uuid.UUID | None:
    """Store a verified event as ``received``; None when its id is already stored."""
    obj = event["data"]["object"]
    values = {
        "id": uuid.uuid4(), "stripe_event_id": event["id"], "type": event["type"],
        "stripe_created": timestamp(event["created"]) or utcnow(), "object_id": ref(obj.get("id")),
        "livemode": bool(event.get("livemode")), "payload": payload,
        "payload_sha256": payload_hash(payload), "source": source, "attempts": 0,
        "received_at": utcnow(), "status": EventStatus.RECEIVED,
    }
    statement = insert_once_statement(session.get_bind().dialect.name, EVENTS, "stripe_event_id")
    inserted: uuid.UUID | None = (await session.execute(statement, values)).scalar_one_or_none()
    return inserted


def claimable(now: datetime) -> ColumnElement[bool]:
    """Received events, retries that are due, and events whose processor's lease lapsed.

    The explicit ``IN`` matches the partial index of the backlog, so a claim reads the backlog
    only, never the millions of finished rows beside it.
    """
    return and_(EVENTS.c.status.in_(UNFINISHED), or_(
        EVENTS.c.status == EventStatus.RECEIVED,
        and_(EVENTS.c.status == EventStatus.RETRYING, EVENTS.c.next_attempt_at <= now),
        and_(EVENTS.c.status == EventStatus.PROCESSING, EVENTS.c.claimed_until < now)))


async def claim_batch(session: AsyncSession, *, worker: str, now: datetime, lease: timedelta,
                      limit: int) -> list[Claimed]:
    """Claim up to ``limit`` claimable events, oldest first, skipping rows others have locked."""
    candidates = (await session.execute(
        select(EVENTS.c.id, EVENTS.c.status, EVENTS.c.attempts, EVENTS.c.claimed_by,
               EVENTS.c.claimed_at)
        .where(claimable(now)).order_by(EVENTS.c.received_at).limit(limit)
        .with_for_update(skip_locked=True))).all()
    return await _claim(session, candidates, worker=worker, now=now, lease=lease)


async def claim_one(session: AsyncSession, stripe_event_id: str, *, worker: str, now: datetime,
                    lease: timedelta, statuses: Iterable[EventStatus]) -> Claimed | StripeEvent | None:
    """Claim one event now (a replay, a reconciliation) if it is in ``statuses`` or its lease lapsed.

    Returns the claim, or the row as it stands when it may not be claimed (or its payload was
    pruned), or None if unknown.
    """
    row = (await session.scalars(
        select(StripeEvent).where(StripeEvent.stripe_event_id == stripe_event_id)
        .with_for_update().execution_options(populate_existing=True))).first()
    if row is None or row.payload is None:  # unknown, or pruned: nothing to handle
        return row
    lapsed = row.status is EventStatus.PROCESSING and row.claimed_until is not None \
        and row.claimed_until < now
    if row.status not in set(statuses) and not lapsed:
        return row
    claimed = await _claim(session, [_Candidate(row.id, row.status, row.attempts, row.claimed_by,
                                                row.claimed_at)],
                           worker=worker, now=now, lease=lease)
    return claimed[0]


@dataclass(frozen=True, slots=True)
class _Candidate:
    id: uuid.UUID
    status: EventStatus
    attempts: int
    claimed_by: str | None
    claimed_at: datetime | None


async def _claim(session: AsyncSession, candidates: Sequence[Any], *, worker: str, now: datetime,
                 lease: timedelta) -> list[Claimed]:
    if not candidates:
        return []
    abandoned = [{"id": uuid.uuid4(), "event_id": c.id, "attempt": c.attempts,
                  "worker": c.claimed_by or "unknown", "delivery": "webhook",
                  "started_at": c.claimed_at or now, "finished_at": None,
                  "outcome": AttemptOutcome.ABANDONED, "error": LEASE_LAPSED, "duration_ms": None}
                 for c in candidates if c.status is EventStatus.PROCESSING]
    if abandoned:  # the attempt a dead processor started, so every attempt keeps its row
        await session.execute(ATTEMPTS.insert(), abandoned)
    rows = (await session.execute(
        update(EVENTS).where(EVENTS.c.id.in_([c.id for c in candidates]))
        .values(status=EventStatus.PROCESSING, claimed_by=worker, claimed_at=now,
                claimed_until=now + lease, attempts=EVENTS.c.attempts + 1)
        .returning(EVENTS.c.id, EVENTS.c.stripe_event_id, EVENTS.c.type, EVENTS.c.attempts,
                   EVENTS.c.payload, EVENTS.c.received_at))).all()
    rows = sorted(rows, key=lambda r: r.received_at)
    return [Claimed(r.id, r.stripe_event_id, r.type, r.attempts, r.payload or {}, now)
            for r in rows]


_HELD = select(EVENTS.c.id).where(
    EVENTS.c.id == bindparam("event_row_id"), EVENTS.c.status == EventStatus.PROCESSING,
    EVENTS.c.claimed_by == bindparam("worker"), EVENTS.c.claimed_at == bindparam("claimed_at"),
).with_for_update()


async def still_held(session: AsyncSession, claimed: Claimed, worker: str) -> bool:
    """Lock the event's row; True if this processor's claim still stands (nobody took it over)."""
    found = (await session.execute(_HELD, {"event_row_id": claimed.row_id, "worker": worker,
                                           "claimed_at": claimed.claimed_at})).first()
    return found is not None


_RELEASED = {"claimed_by": None, "claimed_at": None, "claimed_until": None}
_FINISH = update(EVENTS).where(EVENTS.c.id == bindparam("event_row_id"))


async def finish(session: AsyncSession, claimed: Claimed, *, status: EventStatus,
                 note: str | None, processing_ms: float) -> None:
    await session.execute(_FINISH, {
        "event_row_id": claimed.row_id, "status": status, "processed_at": utcnow(),
        "processing_ms": round(processing_ms, 3), "next_attempt_at": None,
        "last_error": note if status is EventStatus.IGNORED else None, **_RELEASED})


async def record_failure(session: AsyncSession, claimed: Claimed, *, error: str,
                         retry_at: datetime | None) -> None:
    """A failed attempt: ``retrying`` at ``retry_at``, or ``failed`` when there is none."""
    status = EventStatus.RETRYING if retry_at is not None else EventStatus.FAILED
    await session.execute(_FINISH, {
        "event_row_id": claimed.row_id, "status": status, "next_attempt_at": retry_at,
        "last_error": error[:MAX_ERROR_CHARS], **_RELEASED})


def add_attempt(session: AsyncSession, claimed: Claimed, *, worker: str, delivery: str,
                outcome: AttemptOutcome, finished_at: datetime, duration_ms: float,
                error: str | None = None) -> None:
    """One attempt's row, written in the transaction that records its outcome.

    It starts when its claim was taken, and never finishes before that (a drain given a later
    clock, as tests and catch-ups do, keeps its own time).
    """
    session.add(StripeEventAttempt(
        id=uuid.uuid4(), event_id=claimed.row_id, attempt=claimed.attempt, worker=worker[:128],
        delivery=delivery, started_at=claimed.claimed_at,
        finished_at=max(finished_at, claimed.claimed_at),
        outcome=outcome, error=error[:MAX_ERROR_CHARS] if error else None,
        duration_ms=round(duration_ms, 3)))


async def attempts_of(session: AsyncSession, row_id: uuid.UUID) -> list[StripeEventAttempt]:
    """An event's attempts, first to last."""
    result = await session.scalars(select(StripeEventAttempt).where(
        StripeEventAttempt.event_id == row_id).order_by(StripeEventAttempt.attempt,
                                                        StripeEventAttempt.started_at))
    return list(result.all())


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


async def count_by_status(reader: AsyncSession | AsyncConnection) -> dict[str, int]:
    """Stored events per status value, every status present (zero when none has it)."""
    by_status = dict.fromkeys((status.value for status in EventStatus), 0)
    for status, count in await reader.execute(
            select(StripeEvent.status, func.count()).group_by(StripeEvent.status)):
        by_status[EventStatus(status).value] = int(count)
    return by_status


async def oldest_unfinished(reader: AsyncSession | AsyncConnection) -> datetime | None:
    """When the oldest event still waiting for processing arrived; None when none waits."""
    oldest: datetime | None = await reader.scalar(select(func.min(StripeEvent.received_at)).where(
        StripeEvent.status.in_(UNFINISHED)))
    return oldest
