"""The inbox: a verified event is stored and acknowledged at once, and processed off the request.

:func:`accept` is all the endpoint does with a verified event: one ``INSERT ... ON CONFLICT DO
NOTHING`` and a commit, then a hand-off wakes this process's processor. :func:`process_due` is
what processors run (the embedded runner, the Celery task and its beat sweep): claim a batch
under a lease, handle each event in a transaction of its own. :func:`process_now` runs one
named event at once (``replay``, ``reconcile``), through the same claim and the same handler
path.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from billwatch.config import Settings
from billwatch.db import Database, after_commit, utcnow
from billwatch.payments.gateway import PaymentsGateway
from billwatch.redaction import redact
from billwatch.runtime import runtime_of
from billwatch.webhooks import handoff, store
from billwatch.webhooks.models import EventSource, EventStatus, StripeEvent
from billwatch.webhooks.payload import redacted_payload
from billwatch.webhooks.processing import (
    Delivery,
    ProcessOutcome,
    ProcessResult,
    process_claimed,
)
from billwatch.webhooks.store import Claimed

log = structlog.get_logger(__name__)
MAX_BATCHES_PER_DRAIN = 1000
"""A bound on one drain, so a processor also returns to its other work under a steady flood."""


def processor_id(role: str = "processor") -> str:
    """A name for one processor: host, process and a random part (two loops in one process differ)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    stored: bool
    """False when the id was already stored (a duplicate delivery)."""


async def accept(db: Database, event: dict[str, Any], *, body: bytes | None = None,
                 source: EventSource = EventSource.WEBHOOK, wake: bool = True) -> Accepted:
    """Store a verified event once as ``received``, commit, and wake the processor.

    ``wake=False`` is for a caller that handles the event itself right after (reconcile).
    """
    payload = redacted_payload(body, event) if body is not None else redact(event)
    try:
        inserted = await _store(db, event, payload, source, wake=wake)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        # The pooled connection died unnoticed (see billwatch.db._discard_closed) and the pool
        # is now renewed; nothing committed, and the insert is idempotent: once more.
        log.warning("stripe_event_store_retried_after_disconnect", event_id=str(event["id"]))
        inserted = await _store(db, event, payload, source, wake=wake)
    return Accepted(str(event["id"]), inserted is not None)


async def _store(db: Database, event: dict[str, Any], payload: dict[str, Any],
                 source: EventSource, *, wake: bool) -> uuid.UUID | None:
    async with db.unit_of_work() as session:
        inserted = await store.store(session, event, payload, source)
        if inserted is not None and wake:
            runtime = runtime_of(session)
            after_commit(session, lambda: handoff.events_received(runtime))
    return inserted


def lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.webhook_lease_seconds)


async def process_due(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                      worker: str, now: datetime | None = None,
                      limit: int | None = None) -> list[ProcessResult]:
    """Claim one batch of due events and handle each; empty when nothing is due."""
    async with db.unit_of_work() as session:
        batch = await store.claim_batch(session, worker=worker, now=now or utcnow(),
                                        lease=lease(settings),
                                        limit=limit or settings.webhook_batch_size)
    return [await process_claimed(db, gateway, settings, claimed, worker=worker)
            for claimed in batch]


async def drain(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                worker: str | None = None, now: datetime | None = None,
                max_batches: int = MAX_BATCHES_PER_DRAIN,
                stopping: Callable[[], bool] | None = None) -> list[ProcessResult]:
    """Process batches until nothing is due (retries scheduled later stay for their time).

    ``stopping`` is asked between batches, so a shutdown never waits for a whole backlog.
    """
    worker = worker or processor_id("drain")
    results: list[ProcessResult] = []
    for _ in range(max_batches):
        if stopping is not None and stopping():
            break
        batch = await process_due(db, gateway, settings, worker=worker, now=now)
        if not batch:
            break
        results += batch
    return results


REPLAYABLE = (EventStatus.FAILED, EventStatus.IGNORED, EventStatus.RECEIVED, EventStatus.RETRYING)
"""A replay re-runs ignored events too (a customer link or a handler may exist now)."""


async def process_now(db: Database, gateway: PaymentsGateway, settings: Settings,
                      stripe_event_id: str, *, delivery: Delivery) -> ProcessResult | None:
    """Claim one stored event now and handle it; None when no such event is stored."""
    worker = processor_id(delivery.value)
    statuses = REPLAYABLE if delivery is Delivery.REPLAY else \
        (EventStatus.RECEIVED, EventStatus.RETRYING)
    async with db.unit_of_work() as session:
        claimed = await store.claim_one(session, stripe_event_id, worker=worker, now=utcnow(),
                                        lease=lease(settings), statuses=statuses)
    if claimed is None:
        return None
    if isinstance(claimed, StripeEvent):
        return _not_claimed(claimed)
    return await process_claimed(db, gateway, settings, claimed, worker=worker, delivery=delivery)


def _not_claimed(row: StripeEvent) -> ProcessResult:
    note = "payload pruned: nothing to handle" if row.payload is None else \
        "being processed by another processor" if row.status is EventStatus.PROCESSING else \
        f"already {row.status.value}"
    return ProcessResult(row.stripe_event_id, row.type, ProcessOutcome.DUPLICATE, row.attempts,
                         note=note)


__all__ = ["Accepted", "Claimed", "accept", "drain", "process_due", "process_now", "processor_id"]
