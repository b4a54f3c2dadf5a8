"""The Stripe event store: every verified event, once, with what became of it.

The unique Stripe event id is what makes delivery idempotent: a second delivery of an id finds
its row and changes nothing. The payload is stored redacted, so the store can be replayed
without ever holding card data; after ``BILLWATCH_WEBHOOK_PAYLOAD_RETENTION_DAYS`` it is pruned
and only its hash and the row's metadata stay.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, UUIDPrimaryKey, enum_column, utcnow
from billwatch.redacted import RedactedString, RedactedText


class EventStatus(StrEnum):
    RECEIVED = "received"
    """Stored by the endpoint and acknowledged; no processor has claimed it yet."""
    PROCESSING = "processing"
    """Claimed by a processor under a lease (``claimed_until``); a lapsed lease is claimed again."""
    RETRYING = "retrying"
    """An attempt failed; the next one is due at ``next_attempt_at`` (exponential backoff)."""
    PROCESSED = "processed"
    FAILED = "failed"
    """Every attempt failed (or a replay did); alerted, and ``billwatch webhooks replay`` retries."""
    IGNORED = "ignored"
    """A type we do not handle, a customer that is not ours, or a state older than ours."""


UNFINISHED = (EventStatus.RECEIVED, EventStatus.PROCESSING, EventStatus.RETRYING)
"""Statuses whose event still waits for a processor: the backlog the processors claim from, the
backlog gauges count and the console shows. Every other status is final."""
UNFINISHED_SQL = f"status IN ({', '.join(repr(status.value) for status in UNFINISHED)})"
"""The same set as the partial index's predicate (the migration spells out its own copy)."""


class EventSource(StrEnum):
    """How the event first reached us: Stripe's delivery or our reconciliation with the Events API."""

    WEBHOOK = "webhook"
    RECONCILE = "reconcile"


class StripeEvent(UUIDPrimaryKey, Base):
    __tablename__ = "stripe_events"
    __table_args__ = (
        Index("ix_stripe_events_status_received", "status", "received_at"),
        Index("ix_stripe_events_type_created", "type", "stripe_created"),
        Index("ix_stripe_events_object", "object_id"),
        # the processors' claim: the backlog only, in arrival order, however large the store
        Index("ix_stripe_events_unfinished", "received_at", postgresql_where=text(UNFINISHED_SQL),
              sqlite_where=text(UNFINISHED_SQL)),
    )

    stripe_event_id: Mapped[str] = mapped_column(RedactedString(255), unique=True)
    type: Mapped[str] = mapped_column(RedactedString(120))
    stripe_created: Mapped[datetime]
    """Stripe's ``created`` of the event: the ordering key for the state it carries."""
    object_id: Mapped[str | None] = mapped_column(RedactedString(255))
    """``data.object.id`` (subscription, invoice, charge...), to find every event of one object."""
    livemode: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any] | None]
    """The whole event as Stripe sent it, passed through the redactor; None once pruned."""
    payload_sha256: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the stored payload (canonical JSON), kept after the payload is pruned."""
    payload_pruned_at: Mapped[datetime | None]
    status: Mapped[EventStatus] = mapped_column(enum_column(EventStatus, "stripe_event_status"))
    source: Mapped[EventSource] = mapped_column(
        enum_column(EventSource, "stripe_event_source"), default=EventSource.WEBHOOK)
    attempts: Mapped[int] = mapped_column(default=0)
    """Handling attempts started (each has a row in ``stripe_event_attempts``)."""
    last_error: Mapped[str | None] = mapped_column(RedactedText())
    """The last failure (redacted), or why the event was ignored."""
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]
    processing_ms: Mapped[float | None]
    next_attempt_at: Mapped[datetime | None]
    """When a ``retrying`` event's next attempt is due."""
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    """The processor (host, process, task) holding the lease of a ``processing`` event."""
    claimed_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    """The lease: past it, another processor may claim the event (its holder died)."""


class AttemptOutcome(StrEnum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"
    """The handler raised; the error is kept (redacted)."""
    ABANDONED = "abandoned"
    """The processor's lease lapsed before it finished (killed, or stuck): nothing committed."""
    SUPERSEDED = "superseded"
    """The processor lost its claim to another one before its transaction; it changed nothing."""


class StripeEventAttempt(UUIDPrimaryKey, Base):
    """One attempt at handling one stored event, by one processor."""

    __tablename__ = "stripe_event_attempts"
    __table_args__ = (Index("ix_stripe_event_attempts_event", "event_id", "attempt"),)

    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("stripe_events.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    """1 for the first attempt at the event, then 2, 3..."""
    worker: Mapped[str] = mapped_column(String(128))
    delivery: Mapped[str] = mapped_column(String(16))
    """``webhook`` (the inbox), ``replay`` or ``reconcile``."""
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[AttemptOutcome] = mapped_column(
        enum_column(AttemptOutcome, "stripe_event_attempt_outcome"))
    error: Mapped[str | None] = mapped_column(RedactedText())
    duration_ms: Mapped[float | None]
