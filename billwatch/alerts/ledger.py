"""The alert ledger for admins: list with filters (newest first) and acknowledge."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor
from billwatch.alerts.models import Alert, AlertStatus, Severity
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.db import utcnow
from billwatch.errors import Conflict, NotFound


@dataclass(frozen=True, slots=True)
class AlertFilter:
    kind: str | None = None
    severity: Severity | None = None
    status: AlertStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    acknowledged: bool | None = None


async def list_alerts(session: AsyncSession, *, actor: Actor, filters: AlertFilter, limit: int,
                      offset: int) -> list[Alert]:
    """Alerts matching ``filters``, newest first; the read is audited."""
    query = select(Alert)
    if filters.kind:
        query = query.where(Alert.kind == filters.kind)
    if filters.severity:
        query = query.where(Alert.severity == filters.severity)
    if filters.status:
        query = query.where(Alert.status == filters.status)
    if filters.since:
        query = query.where(Alert.created_at >= filters.since)
    if filters.until:
        query = query.where(Alert.created_at < filters.until)
    if filters.acknowledged is not None:
        query = query.where(Alert.acknowledged_at.is_not(None) if filters.acknowledged
                            else Alert.acknowledged_at.is_(None))
    rows = list((await session.scalars(
        query.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit).offset(offset))).all())
    shown = {name: (value.isoformat() if isinstance(value, datetime) else value)
             for name, value in asdict(filters).items() if value is not None}
    recorder.record(session, AuditEvent.ALERTS_READ, actor=actor,
                    data={"filters": shown, "limit": limit, "offset": offset, "returned": len(rows)})
    return rows


async def acknowledge(session: AsyncSession, *, actor: Actor, alert_id: uuid.UUID,
                      note: str | None) -> Alert:
    """Mark an alert as seen by an admin; acknowledging twice is a conflict."""
    alert = (await session.scalars(
        select(Alert).where(Alert.id == alert_id).with_for_update())).first()
    if alert is None:
        raise NotFound(f"alert {alert_id} not found", code="alert_not_found")
    if alert.acknowledged_at is not None:
        raise Conflict(f"alert {alert_id} was acknowledged at {alert.acknowledged_at.isoformat()}",
                       code="already_acknowledged")
    alert.acknowledged_at = utcnow()
    alert.acknowledged_by_user_id = actor.user_id
    recorder.record(session, AuditEvent.ALERT_ACKNOWLEDGED, actor=actor,
                    resource=Resource("alert", alert.id),
                    data={"kind": alert.kind, "severity": alert.severity.value,
                          "dedup_key": alert.dedup_key, "note": note})
    return alert
