"""``POST /webhooks/stripe``: where Stripe (or localstripe, or ``stripe listen``) delivers events.

Not an :class:`~billwatch.http.AuditedRouter` route: a verified event is only stored (the
inbox, :func:`~billwatch.webhooks.inbox.accept`) and acknowledged at once; processors handle it
after the commit, so a slow handler or a Stripe brown-out never makes Stripe time out. Answers:
200 when the event is stored or was already; 400 (413 for an oversized body) when the delivery
is refused before anything is stored; 500 only when the event could not be stored (Stripe then
retries). Handler failures are billwatch's to retry, not Stripe's.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billwatch.audit import anonymous, recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.config import Settings
from billwatch.context import current_origin
from billwatch.db import Database, after_commit
from billwatch.openapi_errors import ErrorOut
from billwatch.redaction import redact_text
from billwatch.runtime import runtime_of
from billwatch.webhooks.inbox import accept
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
    200: {"description": "Stored for processing (`received`), or already stored (`duplicate`)."},
    400: {"model": ErrorOut, "description": "Missing, forged or stale signature, a body that is "
          "not an event, or a field no column can hold (`invalid_event_field`)."},
    413: {"model": ErrorOut, "description": "Body over 1 MiB."},
    500: {"model": ErrorOut,
          "description": "The event could not be stored (the database is unreachable); "
                         "nothing was acknowledged, so Stripe retries."},
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
    """Verify and store one Stripe event; processors handle it after the commit."""
    settings: Settings = request.app.state.settings
    db: Database = request.app.state.db
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
    accepted = await accept(db, event, body=body)
    return JSONResponse({"received": True, "event_id": redact_text(accepted.event_id),
                         "status": "received" if accepted.stored else "duplicate"})


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
        db.required_runtime().metrics.webhooks_rejected.labels(reason=reason).inc()  # no tx
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
            rejected = runtime_of(session).metrics.webhooks_rejected.labels(reason=reason)
            after_commit(session, rejected.inc)
    except Exception:
        log.exception("stripe_webhook_rejection_not_audited", reason=reason)
