"""The Stripe event store: every verified event, once, with what became of it.

The unique Stripe event id is what makes delivery idempotent: a second delivery of an id finds
its row and changes nothing. The payload is stored redacted, so the store can be replayed
without ever holding card data.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, UUIDPrimaryKey, enum_column, utcnow
from billwatch.redacted import RedactedString, RedactedText


class EventStatus(StrEnum):
    RECEIVED = "received"
    """Stored and being handled; the row only commits in a terminal status."""
    PROCESSED = "processed"
    FAILED = "failed"
    """The handler raised; Stripe retries, and ``billwatch webhooks replay`` can too."""
    IGNORED = "ignored"
    """A type we do not handle, a customer that is not ours, or a state older than ours."""


class EventSource(StrEnum):
    """How the event first reached us: Stripe's delivery or our reconciliation with the Events API."""

    WEBHOOK = "webhook"
    RECONCILE = "reconcile"


TERMINAL_EVENT_STATUSES: frozenset[EventStatus] = frozenset(
    {EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.FAILED})
"""Statuses in which an event waits for nothing; every other status counts as unprocessed
(the backlog gauge), so a new waiting status needs no change here, a new final one does."""


class StripeEvent(UUIDPrimaryKey, Base):
    __tablename__ = "stripe_events"
    __table_args__ = (
        Index("ix_stripe_events_status_received", "status", "received_at"),
        Index("ix_stripe_events_type_created", "type", "stripe_created"),
        Index("ix_stripe_events_object", "object_id"),
    )

    stripe_event_id: Mapped[str] = mapped_column(RedactedString(255), unique=True)
    type: Mapped[str] = mapped_column(RedactedString(120))
    stripe_created: Mapped[datetime]
    """Stripe's ``created`` of the event: the ordering key for the state it carries."""
    object_id: Mapped[str | None] = mapped_column(RedactedString(255))
    """``data.object.id`` (subscription, invoice, charge...), to find every event of one object."""
    livemode: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any]]
    """The whole event as Stripe sent it, passed through the redactor."""
    status: Mapped[EventStatus] = mapped_column(enum_column(EventStatus, "stripe_event_status"))
    source: Mapped[EventSource] = mapped_column(
        enum_column(EventSource, "stripe_event_source"), default=EventSource.WEBHOOK)
    attempts: Mapped[int] = mapped_column(default=0)
    """Handling attempts: one per delivery, replay or reconciliation that ran a handler."""
    last_error: Mapped[str | None] = mapped_column(RedactedText())
    """The last failure (redacted), or why the event was ignored."""
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]
    processing_ms: Mapped[float | None]
