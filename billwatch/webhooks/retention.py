"""Pruning stored payloads after ``BILLWATCH_WEBHOOK_PAYLOAD_RETENTION_DAYS``.

A payload is only needed to handle or replay its event, and Stripe itself keeps events 30
days; the row stays (id, type, times, status, attempts) with the payload's SHA-256, so the
store still answers "did this event arrive, and what became of it" and can check a payload
exported earlier. Events still waiting for a processor are never pruned.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, null, select, update

from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.webhooks.models import EventStatus
from billwatch.webhooks.store import EVENTS, payload_hash

PRUNE_BATCH = 500
"""Rows per transaction: short transactions, so processors and the endpoint never wait long."""
FINISHED = (EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.FAILED)

_PRUNE = update(EVENTS).where(EVENTS.c.id == bindparam("row_id")).values(
    payload=null(), payload_sha256=bindparam("sha"), payload_pruned_at=bindparam("pruned_at"))


async def prune_payloads(db: Database, settings: Settings, *, now: datetime | None = None,
                         max_rows: int | None = None) -> int:
    """Drop the payloads of finished events received before the retention; returns how many."""
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.webhook_payload_retention_days)
    pruned = 0
    while max_rows is None or pruned < max_rows:
        limit = PRUNE_BATCH if max_rows is None else min(PRUNE_BATCH, max_rows - pruned)
        async with db.unit_of_work() as session:
            rows = (await session.execute(
                select(EVENTS.c.id, EVENTS.c.payload, EVENTS.c.payload_sha256).where(
                    EVENTS.c.received_at < cutoff, EVENTS.c.payload_pruned_at.is_(None),
                    EVENTS.c.status.in_(FINISHED))
                .order_by(EVENTS.c.received_at).limit(limit)
                .with_for_update(skip_locked=True))).all()
            if not rows:
                break
            # rows stored before the hash existed get theirs now, from the payload being dropped
            await session.execute(_PRUNE, [
                {"row_id": r.id, "pruned_at": now,
                 "sha": r.payload_sha256 or (payload_hash(r.payload) if r.payload else None)}
                for r in rows])
        pruned += len(rows)
    return pruned
