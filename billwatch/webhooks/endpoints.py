"""``POST /webhooks/stripe``: where Stripe (or localstripe, or ``stripe listen``) delivers events.

Not an :class:`~billwatch.http.AuditedRouter` route: one request here needs its own
transactions (the event's, and on failure a second one), so it manages them through
:func:`~billwatch.webhooks.processing.process_event`. Answers: 200 when the event is processed,
ignored or a duplicate; 400 (413 for an oversized body) when the delivery is refused before
anything is stored; 500 when the handler failed, so Stripe retries.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billwatch.audit import anonymous, recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.redaction import redact_text
from billwatch.config import Settings
from billwatch.context import current_origin
from billwatch.db import Database, after_commit
from billwatch.metrics import billing as billing_metrics
from billwatch.openapi_errors import ErrorOut
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks.processing import ProcessOutcome, process_event
from billwatch.webhooks.signature import (
    MAX_BODY_BYTES,
    BodyTooLarge,
    WebhookRejected,
    parse_event,
    verify,
    webhook_secrets,
)

log = structlog.get_logger(__name__)

router = APIRouter(tags=["webhooks"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Processed, ignored (a type billwatch does not handle) or a duplicate."},
    400: {"model": ErrorOut, "description": "Missing, forged or stale signature, a body that is "
          "not an event, or a field no column can hold (`invalid_event_field`)."},
    413: {"model": ErrorOut, "description": "Body over 1 MiB."},
    500: {"model": ErrorOut,
          "description": "The handler failed; the event is stored as failed and Stripe retries."},
}


async def read_body(request: Request) -> bytes:
    """The raw body, refused past 1 MiB by its declared length and by what actually arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(None)
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/webhooks/stripe", responses=_RESPONSES,
             openapi_extra={"x-billwatch-auth": "Stripe-Signature header (the webhook secret)"})
async def stripe_webhook(request: Request) -> JSONResponse:
    """Verify, store and handle one Stripe event."""
    settings: Settings = request.app.state.settings
    db: Database = request.app.state.db
    gateway: PaymentsGateway = request.app.state.gateway
    try:
        body = await read_body(request)
        text = verify(body, request.headers.get("stripe-signature"),
                      secrets=webhook_secrets(settings),
                      tolerance=settings.stripe_webhook_tolerance_seconds)
        event = parse_event(text)
    except (WebhookRejected, BodyTooLarge) as rejection:
        await record_rejection(db, request, rejection)
        return JSONResponse({"error": rejection.code, "detail": rejection.detail},
                            status_code=rejection.status_code)
    result = await process_event(db, gateway, settings, event, body=body)
    if result.outcome is ProcessOutcome.FAILED:
        return JSONResponse({"error": "webhook_handler_failed", "event_id": redact_text(result.event_id),
                             "detail": result.error}, status_code=500)
    return JSONResponse({"received": True, "event_id": redact_text(result.event_id),
                         "status": result.outcome.value})


async def record_rejection(db: Database, request: Request,
                           rejection: WebhookRejected | BodyTooLarge) -> None:
    """One failure audit row and one metric for a delivery refused before it was stored."""
    reason = rejection.reason.value
    log.warning("stripe_webhook_rejected", reason=reason, code=rejection.code,
                status=rejection.status_code)
    if await anonymous.absorbed(  # unsigned or forged: aggregated, not one row (and alert) each
            request.app.state, db, source="webhook", event=AuditEvent.WEBHOOK_FAILED,
            route=request.url.path, method=request.method, status_code=rejection.status_code,
            reason=rejection.code, client_ip=current_origin().client_ip):
        billing_metrics.WEBHOOKS_REJECTED.labels(reason=reason).inc()  # nothing to commit
        return
    try:
        async with db.unit_of_work() as session:
            recorder.record(
                session, AuditEvent.WEBHOOK_FAILED, actor=None, outcome=Outcome.FAILURE,
                reason=f"{rejection.code}: {rejection.detail}",
                data={"stage": "verification", "status_code": rejection.status_code,
                      "reject_reason": reason, "code": rejection.code,
                      "signature_present": "stripe-signature" in request.headers,
                      "content_length": request.headers.get("content-length")})
            after_commit(session,
                         lambda: billing_metrics.WEBHOOKS_REJECTED.labels(reason=reason).inc())
    except Exception:
        log.exception("stripe_webhook_rejection_not_audited", reason=reason)
