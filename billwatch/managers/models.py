"""Billing managers: a proxy (caregiver) a patient has allowed to handle their billing."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, text
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, UUIDPrimaryKey, utcnow


class BillingManagerAssignment(UUIDPrimaryKey, Base):
    __tablename__ = "billing_manager_assignments"
    __table_args__ = (
        Index(
            "uq_billing_manager_assignments_active",
            "patient_id",
            "proxy_id",
            unique=True,
            postgresql_where=text("removed_at IS NULL"),
            sqlite_where=text("removed_at IS NULL"),
        ),
    )

    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    proxy_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_by_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None]
    removed_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
