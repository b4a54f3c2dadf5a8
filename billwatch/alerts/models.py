"""The alert ledger (an outbox of e-mails), the incidents that group it, and each key's lock row.

An alert row is one occurrence, written in the transaction of the event that raised it and
delivered after commit; the row is the durable hand-off, so a crash between commit and delivery
loses nothing. Occurrences of one key group into incidents, and the incident decides what mails.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, Timestamped, UUIDPrimaryKey, enum_column
from billwatch.redacted import RedactedString, RedactedText


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
    """Not mailed on its own: counted into its incident's next mail (or held by an ack)."""
    UNCERTAIN = "uncertain"
    """The SMTP server got the whole message but its answer never came: probably delivered.
    One re-send follows after ``alert_uncertain_resend_seconds``; after a second such copy the
    alert stays ``uncertain`` for good (at most two copies of any mail)."""


class IncidentStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    """Quiet for ``alert_resolve_seconds``: the key's next occurrence opens a new incident."""


class Alert(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_due", "status", "next_attempt_at"),
        Index("ix_alerts_key_status", "dedup_key", "status"),
        Index("ix_alerts_time", "created_at"),
        Index("ix_alerts_kind_time", "kind", "created_at"),
        Index("ix_alerts_counted_in", "counted_in_id"),
        Index("ix_alerts_incident", "incident_id", "status"),
    )

    kind: Mapped[str] = mapped_column(String(40))
    """An :class:`AlertKind` value (a plain string so a new kind needs no migration)."""
    severity: Mapped[Severity] = mapped_column(enum_column(Severity, "alert_severity"))
    dedup_key: Mapped[str] = mapped_column(RedactedString(200))
    subject: Mapped[str] = mapped_column(RedactedString(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """What the mail shows, redacted before it is stored."""
    status: Mapped[AlertStatus] = mapped_column(enum_column(AlertStatus, "alert_status"),
                                                default=AlertStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    """A deliverer's lease: a crashed one's claim lapses and the alert is picked up again."""
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(RedactedText())
    suppressed_count: Mapped[int] = mapped_column(default=0)
    """How many suppressed alerts of the same key this mail counted ("and 37 more since ...")."""
    suppressed_since: Mapped[datetime | None]
    counted_in_id: Mapped[uuid.UUID | None]
    """For a suppressed alert: the mail that counted it; null until one does."""
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    incident_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("alert_incidents.id"))
    """The incident this occurrence belongs to; set by the deliverer, null until then."""
    copies: Mapped[int] = mapped_column(default=0)
    """Attempts that may have put the message on the wire (counted before sending, given back
    when the failure came before the DATA was transmitted): never more than two."""
    uncertain_at: Mapped[datetime | None]
    """When a transmitted copy went unanswered (timeout or dropped connection)."""


class AlertIncident(UUIDPrimaryKey, Base):
    """Occurrences of one key that belong together: opened by the first, resolved by quiet.

    The deliverer keeps the counts under the key's lock row, so ``occurrences - mailed`` is
    exactly what the next summary mail reports.
    """

    __tablename__ = "alert_incidents"
    __table_args__ = (
        Index("ix_alert_incidents_key", "dedup_key", "first_seen_at"),
        Index("ix_alert_incidents_last_seen", "last_seen_at"),
    )

    dedup_key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    severity: Mapped[Severity] = mapped_column(enum_column(Severity, "incident_severity"))
    subject: Mapped[str] = mapped_column(String(200))
    """The subject of the occurrence that opened it."""
    status: Mapped[IncidentStatus] = mapped_column(enum_column(IncidentStatus, "incident_status"),
                                                   default=IncidentStatus.FIRING)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    occurrences: Mapped[int] = mapped_column(default=1)
    mailed_occurrences: Mapped[int] = mapped_column(default=0)
    """Occurrences the mails so far reported (first mail plus summaries)."""
    mails_sent: Mapped[int] = mapped_column(default=0)
    last_mail_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class AlertCooldown(Base):
    """One row per dedup key: its current incident, who is mailing it, when it last mailed.

    Every delivery step of a key starts with an UPDATE of this row, so two deliverers working
    on the same key take turns, on PostgreSQL (row lock) or SQLite (single writer).
    """

    __tablename__ = "alert_cooldowns"

    dedup_key: Mapped[str] = mapped_column(RedactedString(200), primary_key=True)
    holder_alert_id: Mapped[uuid.UUID | None]
    """The alert being mailed right now (between winning the window and the SMTP answer)."""
    last_sent_at: Mapped[datetime | None]
    last_alert_id: Mapped[uuid.UUID | None]
    incident_id: Mapped[uuid.UUID | None]
    """The key's newest incident (firing, or resolved until the next occurrence)."""
