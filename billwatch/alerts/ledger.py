"""The alert ledger for admins: alerts and incidents with filters (newest first), acknowledge."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch.accounts.actor import Actor
from billwatch.alerts.models import Alert, AlertIncident, AlertStatus, IncidentStatus, Severity
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


async def list_incidents(session: AsyncSession, *, actor: Actor, kind: str | None,
                         status: IncidentStatus | None, limit: int,
                         offset: int) -> list[AlertIncident]:
    """Incidents, most recently active first; the read is audited like the alert list."""
    query = select(AlertIncident)
    if kind:
        query = query.where(AlertIncident.kind == kind)
    if status:
        query = query.where(AlertIncident.status == status)
    rows = list((await session.scalars(
        query.order_by(AlertIncident.last_seen_at.desc(), AlertIncident.id.desc())
        .limit(limit).offset(offset))).all())
    shown = {name: value for name, value in (("kind", kind), ("status", status)) if value}
    recorder.record(session, AuditEvent.ALERTS_READ, actor=actor,
                    data={"view": "incidents", "filters": shown, "limit": limit,
                          "offset": offset, "returned": len(rows)})
    return rows


async def acknowledge(session: AsyncSession, *, actor: Actor, alert_id: uuid.UUID,
                      note: str | None) -> Alert:
    """Mark an alert, and the incident it belongs to, as handled by an admin.

    One conditional UPDATE decides, so of two concurrent acknowledgements exactly one wins on
    either backend; the other is a 409 naming the time of the first. The incident keeps its
    first acknowledger, and mails no further summaries.
    """
    now = utcnow()
    won = await session.execute(
        update(Alert).where(Alert.id == alert_id, Alert.acknowledged_at.is_(None))
        .values(acknowledged_at=now, acknowledged_by_user_id=actor.user_id))
    alert = await session.get(Alert, alert_id, populate_existing=True)
    if alert is None:
        raise NotFound(f"alert {alert_id} not found", code="alert_not_found")
    if won.rowcount != 1:  # type: ignore[attr-defined]
        acknowledged = alert.acknowledged_at.isoformat() if alert.acknowledged_at else "?"
        raise Conflict(f"alert {alert_id} was acknowledged at {acknowledged}",
                       code="already_acknowledged")
    if alert.incident_id is not None:
        await session.execute(
            update(AlertIncident).where(AlertIncident.id == alert.incident_id,
                                        AlertIncident.acknowledged_at.is_(None))
            .values(acknowledged_at=now, acknowledged_by_user_id=actor.user_id))
    recorder.record(session, AuditEvent.ALERT_ACKNOWLEDGED, actor=actor,
                    resource=Resource("alert", alert.id),
                    data={"kind": alert.kind, "severity": alert.severity.value,
                          "dedup_key": alert.dedup_key, "note": note,
                          "incident_id": str(alert.incident_id) if alert.incident_id else None})
    return alert


async def oldest_pending(reader: AsyncSession | AsyncConnection) -> datetime | None:
    """When the oldest alert still waiting for delivery was raised; None when none waits."""
    oldest: datetime | None = await reader.scalar(select(func.min(Alert.created_at)).where(
        Alert.status == AlertStatus.PENDING))
    return oldest
