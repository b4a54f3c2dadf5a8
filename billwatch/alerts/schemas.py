"""Bodies of the admin alert-ledger routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from billwatch.alerts.models import AlertStatus, IncidentStatus, Severity
from billwatch.schema_types import Text


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    kind: str
    severity: Severity
    dedup_key: str
    subject: str
    payload: dict[str, Any]
    status: AlertStatus
    attempts: int
    next_attempt_at: datetime | None
    sent_at: datetime | None
    last_error: str | None
    suppressed_count: int = Field(description="Suppressed alerts of the same key this mail counted.")
    suppressed_since: datetime | None
    counted_in_id: uuid.UUID | None = Field(description="For a suppressed alert: the mail that "
                                                        "counted it.")
    acknowledged_at: datetime | None
    acknowledged_by_user_id: uuid.UUID | None
    incident_id: uuid.UUID | None = Field(description="The incident this occurrence belongs to "
                                                      "(null until a deliverer looked at it).")
    copies: int = Field(description="Copies that may have reached the SMTP server (at most 2).")
    uncertain_at: datetime | None = Field(description="When a transmitted copy went unanswered.")


class IncidentOut(BaseModel):
    """Occurrences of one key that belong together; what the mails reported of them."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dedup_key: str
    kind: str
    severity: Severity
    subject: str
    status: IncidentStatus
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    occurrences: int
    mailed_occurrences: int = Field(description="Occurrences the mails so far reported.")
    mails_sent: int
    last_mail_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by_user_id: uuid.UUID | None


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    limit: int
    offset: int


class AlertPage(BaseModel):
    items: list[AlertOut]
    limit: int
    offset: int


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Text | None = Field(default=None, max_length=500,
                             description="What was done about it; kept in the audit trail.")
