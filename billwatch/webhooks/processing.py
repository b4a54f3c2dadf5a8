"""The one path every Stripe event takes: the endpoint, ``replay`` and ``reconcile`` all call it.

Happy path, one transaction: claim the event row (insert, or lock the stored one), run its
handler, mark the row processed or ignored, write ``billing.webhook.received``, commit; metrics
follow the commit. A duplicate finds its row finished and changes nothing. When the handler
raises, the whole transaction rolls back (no business change, no claim), and a fresh one stores
the event as failed (attempts + 1, redacted error) with one ``billing.webhook.failed`` row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.audit.redaction import redact, redact_text
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin, current_origin
from billwatch.db import Database, after_commit, utcnow
from billwatch.metrics import billing as billing_metrics
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks import shapes, store
from billwatch.webhooks.handlers import HANDLERS, EventContext, Handled
from billwatch.webhooks.handlers.common import STRIPE, NeedsStripeRead, owner_for_customer
from billwatch.webhooks.models import EventSource, EventStatus
from billwatch.webhooks.payload import redacted_payload

log = structlog.get_logger(__name__)


class Delivery(StrEnum):
    """How this attempt reached us (recorded on every audit row it writes)."""

    WEBHOOK = "webhook"
    REPLAY = "replay"
    RECONCILE = "reconcile"


class ProcessOutcome(StrEnum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class ProcessResult:
    event_id: str
    type: str
    outcome: ProcessOutcome
    attempts: int
    note: str | None = None
    error: str | None = None


def metric_label(event_type: str) -> str:
    """Event types we handle keep their name; the open-ended rest share one label value."""
    return event_type if event_type in HANDLERS else "other"


async def process_event(db: Database, gateway: PaymentsGateway, settings: Settings,
                        event: dict[str, Any], *, body: bytes | None = None,
                        delivery: Delivery = Delivery.WEBHOOK) -> ProcessResult:
    """Handle one verified (or Stripe-listed, or stored) event exactly once."""
    payload = redacted_payload(body, event) if body is not None else redact(event)
    source = EventSource.RECONCILE if delivery is Delivery.RECONCILE else EventSource.WEBHOOK
    origin = current_origin()
    job = f"stripe-{delivery.value}:{event['id']}"[:128]
    with bound_origin(Origin(origin.request_id, origin.client_ip, job)):
        started = time.perf_counter()
        try:
            try:
                return await _handle(db, gateway, settings, event, payload, source, delivery,
                                     started)
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                # The pooled connection died unnoticed (see billwatch.db._discard_closed) and
                # the pool is now renewed; nothing committed, and processing is idempotent.
                log.warning("stripe_event_retried_after_disconnect", event_id=event["id"])
                return await _handle(db, gateway, settings, event, payload, source, delivery,
                                     started)
        except Exception as error:
            return await _record_failure(db, event, payload, source, delivery, error)


STRIPE_READS_PER_EVENT = 3
"""How many subscriptions one event may need read from Stripe (each read reruns the handler)."""


async def _handle(db: Database, gateway: PaymentsGateway, settings: Settings,
                  event: dict[str, Any], payload: dict[str, Any], source: EventSource,
                  delivery: Delivery, started: float) -> ProcessResult:
    """Run the handler; a Stripe read it asks for happens between transactions, then again."""
    fetched: dict[str, dict[str, Any]] = {}
    for _ in range(STRIPE_READS_PER_EVENT):
        try:
            return await _handle_once(db, gateway, settings, event, payload, source, delivery,
                                      started, fetched)
        except NeedsStripeRead as need:  # rolled back: no transaction, no lock held now
            fetched[need.stripe_subscription_id] = await gateway.retrieve_subscription(
                need.stripe_subscription_id)
    return await _handle_once(db, gateway, settings, event, payload, source, delivery, started,
                              fetched)


async def _handle_once(db: Database, gateway: PaymentsGateway, settings: Settings,
                       event: dict[str, Any], payload: dict[str, Any], source: EventSource,
                       delivery: Delivery, started: float,
                       fetched: dict[str, dict[str, Any]]) -> ProcessResult:
    event_id, event_type = event["id"], event["type"]
    # a replay re-runs ignored events too (a customer link or a handler may exist now)
    finished = {EventStatus.PROCESSED} if delivery is Delivery.REPLAY else \
        {EventStatus.PROCESSED, EventStatus.IGNORED}
    async with db.unit_of_work() as session:
        claim = await store.claim(session, event, payload, source)
        if claim.status in finished:
            return ProcessResult(event_id, event_type, ProcessOutcome.DUPLICATE, claim.attempts,
                                 note=f"already {claim.status.value}")
        ctx = EventContext(session, gateway, settings, event_id, event_type,
                           shapes.timestamp(event["created"]) or utcnow(), event["data"]["object"],
                           fetched)
        handler = HANDLERS.get(event_type)
        handled = await handler(ctx) if handler else Handled.ignored("event type not handled")
        elapsed_ms = (time.perf_counter() - started) * 1000
        attempts = claim.attempts + 1
        _record_received(ctx, claim, handled, delivery, attempts)
        # the UPDATE flushes the handler's audit rows and this one in a single batch
        await store.finish(session, claim, status=handled.status, note=handled.note,
                           processing_ms=elapsed_ms)
        label, seconds = metric_label(event_type), elapsed_ms / 1000
        after_commit(session, lambda: _count_received(label, seconds))
    outcome = ProcessOutcome(handled.status.value)
    return ProcessResult(event_id, event_type, outcome, attempts, note=handled.note)


def _record_received(ctx: EventContext, claim: store.Claim, handled: Handled, delivery: Delivery,
                     attempts: int) -> None:
    recorder.record(
        ctx.session, AuditEvent.WEBHOOK_RECEIVED, actor=STRIPE, owner=handled.owner,
        resource=Resource("stripe_event", claim.row_id),
        stripe=handled.refs or StripeRefs(event_id=ctx.event_id),
        data={"type": ctx.type, "status": handled.status.value, "delivery": delivery.value,
              "missed_delivery": delivery is Delivery.RECONCILE, "attempt": attempts,
              "stripe_created": ctx.created.isoformat(), "note": handled.note, **handled.data})


def _count_received(label: str, seconds: float) -> None:
    billing_metrics.WEBHOOKS_RECEIVED.labels(event_type=label).inc()
    billing_metrics.WEBHOOK_SECONDS.labels(event_type=label).observe(seconds)


async def _record_failure(db: Database, event: dict[str, Any], payload: dict[str, Any],
                          source: EventSource, delivery: Delivery, error: Exception) -> ProcessResult:
    """After the rollback: store the event as failed and audit it, in a fresh transaction."""
    text = redact_text(f"{type(error).__name__}: {error}")
    event_id, event_type = event["id"], event["type"]
    log.warning("stripe_event_failed", event_id=event_id, event_type=event_type,
                delivery=delivery.value, error=text)
    try:
        async with db.unit_of_work() as session:
            marked = await store.mark_failed(session, event, payload, source, text)
            if marked is None:
                return ProcessResult(event_id, event_type, ProcessOutcome.DUPLICATE, 0,
                                     note="finished by another worker meanwhile")
            row_id, attempts = marked
            refs = failure_refs(event)
            recorder.record(
                session, AuditEvent.WEBHOOK_FAILED, actor=STRIPE, outcome=Outcome.FAILURE,
                owner=await owner_for_customer(session, refs.customer_id), reason=text,
                resource=Resource("stripe_event", row_id), stripe=refs,
                data={"stage": "handler", "type": event_type, "delivery": delivery.value,
                      "attempts": attempts, "status_code": 500,
                      "error_type": type(error).__name__, "error_code": getattr(error, "code", None)})
            label = metric_label(event_type)
            after_commit(session, lambda: billing_metrics.WEBHOOKS_FAILED.labels(event_type=label).inc())
    except Exception:
        log.exception("stripe_event_failure_not_recorded", event_id=event_id)
        attempts = 0
    return ProcessResult(event_id, event_type, ProcessOutcome.FAILED, attempts, error=text)


def failure_refs(event: dict[str, Any]) -> StripeRefs:
    """The Stripe ids an event concerns, read without trusting the payload's shape."""
    obj = event["data"]["object"]
    kind = obj.get("object")
    try:
        subscription = shapes.ref(obj.get("id")) if kind == "subscription" else \
            shapes.invoice_subscription_id(obj) if kind == "invoice" else shapes.ref(obj.get("subscription"))
    except (AttributeError, TypeError):  # a payload malformed enough to have failed its handler
        subscription = None
    invoice = shapes.ref(obj.get("id")) if kind == "invoice" else shapes.ref(obj.get("invoice"))
    return StripeRefs(event_id=event["id"], customer_id=shapes.ref(obj.get("customer")),
                      subscription_id=subscription, invoice_id=invoice)

