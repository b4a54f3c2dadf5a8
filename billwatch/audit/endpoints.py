"""Admin-only access to the audit trail: list, one row, streamed export. Every read is audited.

Reads write ``audit.read``; a refused caller (no token, or not an admin) writes exactly one
``audit.access_denied`` row instead of the generic failure row, because "who tried to read the
audit trail and was turned away" is the question an assessor asks.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from billwatch import access
from billwatch.access import AdminActor, AdminTarget
from billwatch.accounts.models import OwnerType, Role
from billwatch.audit import recorder, service
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.audit.recorder import Resource
from billwatch.audit.service import AuditFilters, Entry
from billwatch.db import Database
from billwatch.errors import BillwatchError, Forbidden, Unauthorized
from billwatch.http import AuditedRoute, AuditedRouter, SessionDep, audited, record_failure
from billwatch.schema_types import Line, UtcDatetime


class AuditReadRoute(AuditedRoute):
    """One unit of work per request, like every audited route; a refusal is ``access_denied``."""

    def failure_event(self, error: Exception) -> AuditEvent:
        denied = isinstance(error, (Unauthorized, Forbidden))
        return AuditEvent.AUDIT_ACCESS_DENIED if denied else AuditEvent.AUDIT_READ


router = AuditedRouter(prefix="/admin/audit-logs", tags=["audit"], route_class=AuditReadRoute)


class AuditLogOut(BaseModel):
    id: uuid.UUID
    seq: int | None
    """Position in the sealed chain; null until the next checkpoint seals the row."""
    occurred_at: datetime
    event_type: str
    outcome: Outcome
    action: str
    reason: str | None
    actor_user_id: uuid.UUID | None
    actor_role: Role | None
    actor_name: str | None
    manager_assignment_id: uuid.UUID | None
    owner_type: OwnerType | None
    owner_id: uuid.UUID | None
    resource_type: str | None
    resource_id: str | None
    request_id: str | None
    client_ip: str | None
    job_id: str | None
    stripe_event_id: str | None
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    stripe_invoice_id: str | None
    idempotency_key: str | None
    metadata: dict[str, Any] | None
    metadata_error: str | None = None

    @classmethod
    def of(cls, entry: Entry) -> AuditLogOut:
        row: AuditLog = entry.row
        metadata, error = service.metadata_of(row)
        fields = {name: getattr(row, name) for name in _ROW_FIELDS}
        # Built from our own typed row: validating it again would only cost time per row.
        return cls.model_construct(**fields, seq=entry.seq, metadata=metadata,
                                   metadata_error=error)


_ROW_FIELDS = [name for name in AuditLogOut.model_fields
               if name not in ("seq", "metadata", "metadata_error")]


class AuditLogPage(BaseModel):
    items: list[AuditLogOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; null on the last page."""


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


def audit_filters(
    event_type: Annotated[Line | None, Query(
        max_length=80, description="Exact event, or a prefix ending in '.' (billing.proxy.)")] = None,
    actor_user_id: uuid.UUID | None = None,
    actor_role: Role | None = None,
    actor_name: Annotated[Line | None, Query(max_length=80)] = None,
    manager_assignment_id: uuid.UUID | None = None,
    owner_type: OwnerType | None = None,
    owner_id: uuid.UUID | None = None,
    resource_type: Annotated[Line | None, Query(max_length=40)] = None,
    resource_id: Annotated[Line | None, Query(max_length=80)] = None,
    outcome: Outcome | None = None,
    occurred_from: Annotated[UtcDatetime | None, Query(alias="from", description="Inclusive, UTC")] = None,
    occurred_to: Annotated[UtcDatetime | None, Query(alias="to", description="Exclusive, UTC")] = None,
) -> AuditFilters:
    return AuditFilters(
        event_type=event_type, actor_user_id=actor_user_id, actor_role=actor_role,
        actor_name=actor_name, manager_assignment_id=manager_assignment_id,
        owner_type=owner_type, owner_id=owner_id, resource_type=resource_type,
        resource_id=resource_id, outcome=outcome, occurred_from=occurred_from,
        occurred_to=occurred_to)


Filters = Annotated[AuditFilters, Depends(audit_filters)]
RowAccess = Annotated[AdminTarget[None], Depends(access.admin_on("audit_log", "audit_log_id"))]


@router.get("", response_model=AuditLogPage, openapi_extra=audited(AuditEvent.AUDIT_READ))
async def list_audit_logs(
    session: SessionDep, actor: AdminActor, filters: Filters,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[Line | None, Query(max_length=200)] = None,
) -> Response:
    """Audit rows matching the filters, newest first, one keyset page at a time."""
    found = await service.page(session, filters, limit=limit, cursor=cursor)
    recorder.record(session, AuditEvent.AUDIT_READ, actor=actor,
                    data={"view": "list", "filters": filters.applied(),
                          "returned": len(found.entries), "paged": cursor is not None})
    page = AuditLogPage.model_construct(items=[AuditLogOut.of(entry) for entry in found.entries],
                                        next_cursor=found.next_cursor)
    return _json(page)


@router.get("/export", openapi_extra=audited(AuditEvent.AUDIT_READ),
            response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}})
async def export_audit_logs(request: Request, session: SessionDep, actor: AdminActor,
                            filters: Filters,
                            format: ExportFormat = ExportFormat.JSONL) -> StreamingResponse:
    """Every matching row, newest first, streamed as CSV or JSON lines."""
    recorder.record(session, AuditEvent.AUDIT_READ, actor=actor,
                    data={"view": "export", "format": format.value, "filters": filters.applied()})
    return export_response(request, filters, format)


def export_response(request: Request, filters: AuditFilters,
                    format: ExportFormat) -> StreamingResponse:
    """The streamed export of ``filters`` (the API's and the console's); the caller audits it."""
    db: Database = request.app.state.db
    body = _failure_audited(request, _jsonl(db, filters) if format is ExportFormat.JSONL
                            else _csv(db, filters))
    media = "application/x-ndjson" if format is ExportFormat.JSONL else "text/csv"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="audit-logs-{stamp}.{format.value}"',
        "Cache-Control": "no-store"})


@router.get("/{audit_log_id}", response_model=AuditLogOut,
            openapi_extra=audited(AuditEvent.AUDIT_READ))
async def read_audit_log(target: RowAccess, session: SessionDep) -> Response:
    """One audit row, with its decrypted metadata and its place in the chain."""
    entry = await service.get(session, target.id)
    recorder.record(session, AuditEvent.AUDIT_READ, actor=target.actor,
                    resource=Resource("audit_log", target.id), data={"view": "one"})
    return _json(AuditLogOut.of(entry))


def _json(model: BaseModel) -> Response:
    """The model serialised once (the response model still documents it in OpenAPI)."""
    return Response(model.model_dump_json(), media_type="application/json")


# --- export bodies --------------------------------------------------------------------------

class ExportInterrupted(BillwatchError):
    """The export's query failed after the response began: audited, and the stream is cut."""

    code = "export_failed"


async def _failure_audited(request: Request, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, plus one ``audit.read`` failure row if it stops midway.

    The success row was committed when the export began; what the admin received is only known
    once the stream ends. On failure the error is raised again, so the server cuts the
    response instead of ending it as if complete.
    """
    chunks = 0
    try:
        async for chunk in body:
            chunks += 1
            yield chunk
    except Exception as error:
        interrupted = ExportInterrupted(
            f"export stopped after {chunks} chunks: {type(error).__name__}")
        await record_failure(request, AuditEvent.AUDIT_READ, interrupted)
        raise interrupted from error


async def _jsonl(db: Database, filters: AuditFilters) -> AsyncIterator[bytes]:
    async for entry in service.stream(db, filters):
        yield AuditLogOut.of(entry).model_dump_json().encode() + b"\n"


CSV_COLUMNS = [name for name in AuditLogOut.model_fields]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with ``'``."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


async def _csv(db: Database, filters: AuditFilters) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    async for entry in service.stream(db, filters):
        out = AuditLogOut.of(entry)
        writer.writerow([_cell(getattr(out, name)) for name in CSV_COLUMNS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()
