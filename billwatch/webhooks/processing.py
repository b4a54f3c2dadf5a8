"""Handling one claimed event: the path the inbox processors, ``replay`` and ``reconcile`` share.

A processor holds the event under a lease (:mod:`billwatch.webhooks.store`). Happy path, one
transaction: lock the row and check the claim is still ours, run the handler, write
``billing.webhook.received``, mark the row processed or ignored, record the attempt, commit;
metrics follow the commit. A Stripe read a handler needs happens before that transaction
(:class:`~billwatch.webhooks.handlers.common.NeedsStripeRead`), never under its locks.

When the handler raises, the transaction rolls back (no business change) and a fresh one
records the attempt and either schedules the next one (``retrying``, exponential backoff with
jitter) or, after the last, marks the event ``failed`` with one ``billing.webhook.failed`` row,
which is what alerts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin, current_origin
from billwatch.db import Database, after_commit, utcnow
from billwatch.metrics.billing import BillingMetrics
from billwatch.payments.gateway import PaymentsGateway
from billwatch.redaction import redact_text
from billwatch.runtime import runtime_of
from billwatch.webhooks import shapes, store
from billwatch.webhooks.handlers import HANDLERS, EventContext, Handled
from billwatch.webhooks.handlers.common import STRIPE, NeedsStripeRead, owner_for_customer
from billwatch.webhooks.models import AttemptOutcome
from billwatch.webhooks.store import Claimed

log = structlog.get_logger(__name__)

class Delivery(StrEnum):
    """How this attempt reached us (recorded on every audit row and attempt it writes)."""

    WEBHOOK = "webhook"
    REPLAY = "replay"
    RECONCILE = "reconcile"


class ProcessOutcome(StrEnum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    RETRYING = "retrying"
    """The attempt failed; another is scheduled."""
    FAILED = "failed"
    DUPLICATE = "duplicate"
    """Nothing ran: already finished, or another processor holds (or took over) the event."""


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


def retry_delay(settings: Settings, attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds after failed attempt ``attempt``: base x 2^(attempt-1), capped, minus jitter."""
    exponent = min(max(attempt - 1, 0), 30)
    delay = min(settings.webhook_retry_max_seconds, settings.webhook_retry_base_seconds * 2 ** exponent)
    jitter: float = settings.webhook_retry_jitter * (rng or random).random()
    return float(delay * (1 - jitter))


STRIPE_READS_PER_EVENT = 3
"""How many subscriptions one event may need read from Stripe (each read reruns the handler)."""


async def process_claimed(db: Database, gateway: PaymentsGateway, settings: Settings,
                          claimed: Claimed, *, worker: str,
                          delivery: Delivery = Delivery.WEBHOOK) -> ProcessResult:
    """Handle one event this processor claimed; never raises for a handler failure."""
    origin = current_origin()
    job = f"stripe-{delivery.value}:{claimed.stripe_event_id}"[:128]
    with bound_origin(Origin(origin.request_id, origin.client_ip, job)):
        started = time.perf_counter()
        if delivery is Delivery.WEBHOOK and claimed.attempt > settings.webhook_max_attempts:
            # only a lapsed lease gets an event this far (a failure at the last gives up)
            gave_up = RuntimeError(f"gave up: {claimed.attempt - 1} attempts never finished")
            return await _record_failure(db, settings, claimed, worker, delivery, started, gave_up)
        try:
            try:
                return await _handle(db, gateway, settings, claimed, worker, delivery, started)
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                # The pooled connection died unnoticed (see billwatch.db._discard_closed) and
                # the pool is now renewed; nothing committed, and the claim still stands.
                log.warning("stripe_event_retried_after_disconnect", event_id=claimed.stripe_event_id)
                return await _handle(db, gateway, settings, claimed, worker, delivery, started)
        except Exception as error:
            return await _record_failure(db, settings, claimed, worker, delivery, started, error)


async def _handle(db: Database, gateway: PaymentsGateway, settings: Settings, claimed: Claimed,
                  worker: str, delivery: Delivery, started: float) -> ProcessResult:
    """Run the handler; a Stripe read it asks for happens between transactions, then again."""
    fetched: dict[str, dict[str, Any]] = {}
    for _ in range(STRIPE_READS_PER_EVENT):
        try:
            return await _handle_once(db, gateway, settings, claimed, worker, delivery, started,
                                      fetched)
        except NeedsStripeRead as need:  # rolled back: no transaction, no lock held now
            fetched[need.stripe_subscription_id] = await gateway.retrieve_subscription(
                need.stripe_subscription_id)
    return await _handle_once(db, gateway, settings, claimed, worker, delivery, started, fetched)


async def _handle_once(db: Database, gateway: PaymentsGateway, settings: Settings,
                       claimed: Claimed, worker: str, delivery: Delivery, started: float,
                       fetched: dict[str, dict[str, Any]]) -> ProcessResult:
    event = claimed.payload
    event_id, event_type = claimed.stripe_event_id, claimed.type
    async with db.unit_of_work() as session:
        if not await store.still_held(session, claimed, worker):
            return ProcessResult(event_id, event_type, ProcessOutcome.DUPLICATE, claimed.attempt,
                                 note="claimed by another processor")
        ctx = EventContext(session, gateway, settings, event_id, event_type,
                           shapes.timestamp(event["created"]) or utcnow(), event["data"]["object"],
                           fetched)
        handler = HANDLERS.get(event_type)
        handled = await handler(ctx) if handler else Handled.ignored("event type not handled")
        elapsed_ms = (time.perf_counter() - started) * 1000
        _record_received(ctx, claimed, handled, delivery)
        # the UPDATE flushes the handler's audit rows, this one and the attempt in one batch
        store.add_attempt(session, claimed, worker=worker, delivery=delivery.value,
                          outcome=AttemptOutcome(handled.status.value), finished_at=utcnow(),
                          duration_ms=elapsed_ms)
        await store.finish(session, claimed, status=handled.status, note=handled.note,
                           processing_ms=elapsed_ms)
        label, seconds = metric_label(event_type), elapsed_ms / 1000
        metrics = runtime_of(session).metrics
        after_commit(session, lambda: _count_received(metrics, label, seconds))
    outcome = ProcessOutcome(handled.status.value)
    return ProcessResult(event_id, event_type, outcome, claimed.attempt, note=handled.note)


def _record_received(ctx: EventContext, claimed: Claimed, handled: Handled,
                     delivery: Delivery) -> None:
    recorder.record(
        ctx.session, AuditEvent.WEBHOOK_RECEIVED, actor=STRIPE, owner=handled.owner,
        resource=Resource("stripe_event", claimed.row_id),
        stripe=handled.refs or StripeRefs(event_id=ctx.event_id),
        data={"type": ctx.type, "status": handled.status.value, "delivery": delivery.value,
              "missed_delivery": delivery is Delivery.RECONCILE, "attempt": claimed.attempt,
              "stripe_created": ctx.created.isoformat(), "note": handled.note, **handled.data})


def _count_received(metrics: BillingMetrics, label: str, seconds: float) -> None:
    metrics.webhooks_received.labels(event_type=label).inc()
    metrics.webhook_seconds.labels(event_type=label).observe(seconds)


async def _record_failure(db: Database, settings: Settings, claimed: Claimed, worker: str,
                          delivery: Delivery, started: float, error: Exception) -> ProcessResult:
    """After the rollback: record the attempt, then schedule a retry or give the event up."""
    text = redact_text(f"{type(error).__name__}: {error}")
    event_id, event_type = claimed.stripe_event_id, claimed.type
    last = delivery is Delivery.REPLAY or claimed.attempt >= settings.webhook_max_attempts
    now = max(utcnow(), claimed.claimed_at)  # a drain run on a later clock (tests) keeps it
    retry_at = None if last else now + timedelta(seconds=retry_delay(settings, claimed.attempt))
    log.warning("stripe_event_attempt_failed", event_id=event_id, event_type=event_type,
                delivery=delivery.value, attempt=claimed.attempt, error=text,
                retry_at=retry_at.isoformat() if retry_at else None)
    label = metric_label(event_type)
    try:
        async with db.unit_of_work() as session:
            if not await store.still_held(session, claimed, worker):
                return ProcessResult(event_id, event_type, ProcessOutcome.DUPLICATE,
                                     claimed.attempt, note="claimed by another processor")
            store.add_attempt(session, claimed, worker=worker, delivery=delivery.value,
                              outcome=AttemptOutcome.FAILED,
                              finished_at=now, duration_ms=(time.perf_counter() - started) * 1000,
                              error=text)
            await store.record_failure(session, claimed, error=text, retry_at=retry_at)
            metrics = runtime_of(session).metrics
            if retry_at is not None:
                after_commit(session, metrics.webhook_retries.labels(event_type=label).inc)
            else:
                await _audit_failure(session, claimed, delivery, error, text)
                after_commit(session, metrics.webhooks_failed.labels(event_type=label).inc)
    except Exception:  # the lease lapses and another attempt records it
        log.exception("stripe_event_failure_not_recorded", event_id=event_id)
    outcome = ProcessOutcome.RETRYING if retry_at is not None else ProcessOutcome.FAILED
    return ProcessResult(event_id, event_type, outcome, claimed.attempt, error=text)


async def _audit_failure(session: Any, claimed: Claimed, delivery: Delivery, error: Exception,
                         text: str) -> None:
    refs = failure_refs(claimed.payload)
    recorder.record(
        session, AuditEvent.WEBHOOK_FAILED, actor=STRIPE, outcome=Outcome.FAILURE,
        owner=await owner_for_customer(session, refs.customer_id), reason=text,
        resource=Resource("stripe_event", claimed.row_id), stripe=refs,
        data={"stage": "handler", "type": claimed.type, "delivery": delivery.value,
              "attempts": claimed.attempt, "error_type": type(error).__name__,
              "error_code": getattr(error, "code", None)})


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
