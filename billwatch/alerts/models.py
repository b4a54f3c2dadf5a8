"""The alert ledger (an outbox of e-mails) and the cooldown window of each dedup key.

An alert row is written in the transaction of the event that raised it and delivered after
commit; the row is the durable hand-off, so a crash between commit and delivery loses nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, Timestamped, UUIDPrimaryKey, enum_column


class AlertKind(StrEnum):
    PAYMENT_FINAL_FAILURE = "payment_final_failure"
    WEBHOOK_FAILURE = "webhook_failure"
    CHURN_HIGH = "churn_high"
    REFUNDS_HIGH = "refunds_high"
    AUDIT_WRITE_FAILURE = "audit_write_failure"
    PAYMENT_FAILURE_RATE = "payment_failure_rate"
    DAILY_REPORT = "daily_report"
    DUPLICATE_SUBSCRIPTION = "duplicate_subscription"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class AlertStatus(StrEnum):
    PENDING = "pending"
    """Waiting for (another) delivery attempt."""
    SENT = "sent"
    FAILED = "failed"
    """Gave up after ``alert_max_attempts``; visible in the ledger, never mailed."""
    SUPPRESSED = "suppressed"
    """Inside its key's cooldown window: counted into the key's next mail instead."""


class Alert(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_due", "status", "next_attempt_at"),
        Index("ix_alerts_key_status", "dedup_key", "status"),
        Index("ix_alerts_time", "created_at"),
        Index("ix_alerts_kind_time", "kind", "created_at"),
        Index("ix_alerts_counted_in", "counted_in_id"),
    )

    kind: Mapped[str] = mapped_column(String(40))
    """An :class:`AlertKind` value (a plain string so a new kind needs no migration)."""
    severity: Mapped[Severity] = mapped_column(enum_column(Severity, "alert_severity"))
    dedup_key: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """What the mail shows, redacted before it is stored."""
    status: Mapped[AlertStatus] = mapped_column(enum_column(AlertStatus, "alert_status"),
                                                default=AlertStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    """A deliverer's lease: a crashed one's claim lapses and the alert is picked up again."""
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    suppressed_count: Mapped[int] = mapped_column(default=0)
    """How many suppressed alerts of the same key this mail counted ("and 37 more since ...")."""
    suppressed_since: Mapped[datetime | None]
    counted_in_id: Mapped[uuid.UUID | None]
    """For a suppressed alert: the mail that counted it; null until one does."""
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class AlertCooldown(Base):
    """One row per dedup key: who holds its window and when it last mailed.

    Winning the window is one conditional UPDATE of this row, so two deliverers racing for the
    same key cannot both mail, on PostgreSQL (row lock) or SQLite (single writer).
    """

    __tablename__ = "alert_cooldowns"

    dedup_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder_alert_id: Mapped[uuid.UUID | None]
    """The alert being mailed right now (between winning the window and the SMTP answer)."""
    last_sent_at: Mapped[datetime | None]
    last_alert_id: Mapped[uuid.UUID | None]
