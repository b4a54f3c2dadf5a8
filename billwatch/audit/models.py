"""The audit_logs table: who did what to whose money, when, from where, and did it work."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.accounts.models import OwnerType, Role
from billwatch.audit.events import Outcome
from billwatch.db import Base, UUIDPrimaryKey, enum_column, utcnow


class AuditLog(UUIDPrimaryKey, Base):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_owner_time", "owner_type", "owner_id", "occurred_at"),
        Index("ix_audit_logs_event_time", "event_type", "occurred_at"),
        Index("ix_audit_logs_actor_time", "actor_user_id", "occurred_at"),
        Index("ix_audit_logs_time", "occurred_at"),
        Index("ix_audit_logs_assignment", "manager_assignment_id"),
    )

    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_type: Mapped[str] = mapped_column(String(80))
    outcome: Mapped[Outcome] = mapped_column(enum_column(Outcome, "audit_outcome"))
    action: Mapped[str] = mapped_column(String(80))
    """The verb of the event ("created", "cancelled"...), for filters that ignore the domain."""
    reason: Mapped[str | None] = mapped_column(Text)
    """Why a failure failed (redacted); null on success."""

    actor_user_id: Mapped[uuid.UUID | None]
    actor_role: Mapped[Role | None] = mapped_column(enum_column(Role, "audit_actor_role"))
    actor_name: Mapped[str | None] = mapped_column(String(80))
    """For non-user actors: ``stripe``, ``job:daily-metrics``, ``cli``."""
    manager_assignment_id: Mapped[uuid.UUID | None]
    """The billing-manager assignment that authorised a proxy's action."""

    resource_type: Mapped[str | None] = mapped_column(String(40))
    resource_id: Mapped[str | None] = mapped_column(String(80))
    owner_type: Mapped[OwnerType | None] = mapped_column(enum_column(OwnerType, "audit_owner_type"))
    owner_id: Mapped[uuid.UUID | None]

    request_id: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(128))

    stripe_event_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))

    data: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    """Event details, redacted before they are stored."""
