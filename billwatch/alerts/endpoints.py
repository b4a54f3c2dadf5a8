"""Admin routes of the alert ledger: thin, admin only, audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from billwatch import access
from billwatch.access import AdminActor, AdminTarget
from billwatch.alerts import ledger
from billwatch.alerts.models import AlertStatus, IncidentStatus, Severity
from billwatch.alerts.schemas import (
    AcknowledgeRequest,
    AlertOut,
    AlertPage,
    IncidentOut,
    IncidentPage,
)
from billwatch.audit.events import AuditEvent
from billwatch.http import AuditedRouter, SessionDep, audited
from billwatch.schema_types import INT64_MAX, BoundedDatetime, Line

router = AuditedRouter(prefix="/admin/alerts", tags=["admin", "alerts"])

AcknowledgeAccess = Annotated[AdminTarget[AcknowledgeRequest | None], Depends(
    access.admin_on("alert", "alert_id", AcknowledgeRequest | None, body_default=None))]


@router.get("", response_model=AlertPage, openapi_extra=audited(AuditEvent.ALERTS_READ))
async def list_alerts(
    session: SessionDep, actor: AdminActor,
    kind: Annotated[Line | None, Query(max_length=40)] = None,
    severity: Severity | None = None,
    status: AlertStatus | None = None,
    since: BoundedDatetime | None = None,
    until: BoundedDatetime | None = None,
    acknowledged: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> AlertPage:
    """The alert ledger, newest first, filtered by kind, severity, status and time."""
    filters = ledger.AlertFilter(kind=kind, severity=severity, status=status, since=since,
                                 until=until, acknowledged=acknowledged)
    rows = await ledger.list_alerts(session, actor=actor, filters=filters, limit=limit,
                                    offset=offset)
    return AlertPage(items=[AlertOut.model_validate(row) for row in rows], limit=limit,
                     offset=offset)


@router.get("/incidents", response_model=IncidentPage,
            openapi_extra=audited(AuditEvent.ALERTS_READ))
async def list_incidents(
    session: SessionDep, actor: AdminActor,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    status: IncidentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> IncidentPage:
    """Incidents (first seen, last seen, occurrences, mails sent, acknowledged), newest first."""
    rows = await ledger.list_incidents(session, actor=actor, kind=kind, status=status,
                                       limit=limit, offset=offset)
    return IncidentPage(items=[IncidentOut.model_validate(row) for row in rows], limit=limit,
                        offset=offset)


@router.post("/{alert_id}/acknowledge", response_model=AlertOut,
             openapi_extra=audited(AuditEvent.ALERT_ACKNOWLEDGED))
async def acknowledge_alert(target: AcknowledgeAccess, session: SessionDep) -> AlertOut:
    """Mark an alert and its incident as handled by the calling admin (409 if already done)."""
    alert = await ledger.acknowledge(session, actor=target.actor, alert_id=target.id,
                                     note=target.body.note if target.body else None)
    return AlertOut.model_validate(alert)
