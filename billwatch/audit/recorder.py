"""The audit recorder: adds one row to the caller's session and never commits.

The row rides in the same transaction as the change it records, so either both are durable or
neither is. Failures are recorded by the caller in a fresh transaction after the rollback.

It fails closed. The row is built, redacted, encrypted and hashed right here, so a broken key
ring raises at once, inside the operation; the INSERT happens at the caller's flush or commit,
so a database that refuses the row fails the commit and rolls the business change back with it
(no refund without its audit row). Either way ``audit_write_failures_total`` rises and every
hook registered with :func:`on_write_failure` is told, which is where the alert hangs.
Committed rows are counted in ``billing_audit_writes_total{outcome}`` after commit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.audit import chain, crypto
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.audit.redaction import redact, redact_text
from billwatch.context import current_origin
from billwatch.db import after_commit, utcnow
from billwatch.metrics import billing as billing_metrics
from billwatch.redacted import RedactedString, clean

log = structlog.get_logger(__name__)

AuditListener = Callable[[AsyncSession, AuditLog], None]
_listeners: list[AuditListener] = []


@dataclass(frozen=True, slots=True)
class AuditWriteFailure:
    """An audit row that could not be written; the operation it belonged to failed too."""

    event_types: tuple[str, ...]
    error: BaseException
    stage: str
    """``record`` (building/encrypting the row) or ``insert`` (the database refused it)."""


WriteFailureHook = Callable[[AuditWriteFailure], None]
_failure_hooks: list[WriteFailureHook] = []


def subscribe(listener: AuditListener) -> AuditListener:
    """Call ``listener(session, row)`` for every recorded row, inside the same transaction.

    Alert rules hang off the audit trail this way: an alert row rides in the transaction of the
    event that raised it, so a rolled-back event never alerts. Listeners must only add to the
    session (and register after-commit work); they must not commit or do I/O.
    """
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def on_write_failure(hook: WriteFailureHook) -> WriteFailureHook:
    """Call ``hook(failure)`` whenever an audit row cannot be written.

    Hooks run synchronously where the failure surfaced — possibly inside a failing flush, never
    inside a transaction that will commit — so they must be quick and must not touch the
    failing session: hand off (enqueue an alert, write in a fresh transaction later) and return.
    A hook that raises is logged and ignored; the original error still propagates.
    """
    if hook not in _failure_hooks:
        _failure_hooks.append(hook)
    return hook


def remove_write_failure_hook(hook: WriteFailureHook) -> None:
    if hook in _failure_hooks:
        _failure_hooks.remove(hook)


def _write_failed(failure: AuditWriteFailure) -> None:
    billing_metrics.audit_write_failed()
    log.error("audit_write_failed", event_types=list(failure.event_types), stage=failure.stage,
              error_type=type(failure.error).__name__, error=redact_text(str(failure.error)))
    for hook in list(_failure_hooks):
        try:
            hook(failure)
        except Exception:
            log.exception("audit_write_failure_hook_failed", hook=repr(hook))


_AUDIT_INSERT = re.compile(r'^\s*INSERT\s+INTO\s+"?audit_logs"?[\s(]', re.IGNORECASE)


@event.listens_for(Engine, "handle_error")
def _database_refused_row(context: ExceptionContext) -> None:
    """Every engine: an INSERT into audit_logs that fails is an audit write failure."""
    if not _AUDIT_INSERT.match(context.statement or ""):
        return
    parameters = getattr(context.execution_context, "compiled_parameters", None) or []
    types = sorted({str(p["event_type"]) for p in parameters
                    if isinstance(p, Mapping) and p.get("event_type")})
    _write_failed(AuditWriteFailure(tuple(types), context.original_exception, "insert"))


@dataclass(frozen=True, slots=True)
class StripeRefs:
    event_id: str | None = None
    customer_id: str | None = None
    subscription_id: str | None = None
    invoice_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resource:
    type: str
    id: uuid.UUID | str


def record(
    session: AsyncSession,
    event: AuditEvent,
    *,
    actor: Actor | SystemActor | None,
    outcome: Outcome = Outcome.SUCCESS,
    owner: OwnerRef | None = None,
    resource: Resource | None = None,
    stripe: StripeRefs | None = None,
    idempotency_key: str | None = None,
    reason: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Add the audit row for ``event`` to ``session``; the caller's unit of work commits it."""
    try:
        row = _build(event, actor=actor, outcome=outcome, owner=owner, resource=resource,
                     stripe=stripe or StripeRefs(), idempotency_key=idempotency_key,
                     reason=reason, data=data)
    except Exception as error:
        _write_failed(AuditWriteFailure((AuditEvent(event).value,), error, "record"))
        raise
    session.add(row)
    after_commit(session, partial(billing_metrics.audit_written, row.outcome.value))
    for listener in list(_listeners):
        listener(session, row)
    return row


def _build(event: AuditEvent, *, actor: Actor | SystemActor | None, outcome: Outcome,
           owner: OwnerRef | None, resource: Resource | None, stripe: StripeRefs,
           idempotency_key: str | None, reason: str | None,
           data: Mapping[str, Any] | None) -> AuditLog:
    """The finished row: redacted, metadata encrypted, content hashed."""
    event = AuditEvent(event)
    origin = current_origin()
    user_actor = actor if isinstance(actor, Actor) else None
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "occurred_at": utcnow(),
        "event_type": event.value,
        "action": event.value.rsplit(".", 1)[-1],
        "outcome": Outcome(outcome),
        "reason": redact_text(reason) if reason else None,
        "actor_user_id": user_actor.user_id if user_actor else None,
        "actor_role": user_actor.role if user_actor else None,
        "actor_name": redact_text(actor.name) if isinstance(actor, SystemActor) else None,
        "manager_assignment_id": user_actor.via_assignment_id if user_actor else None,
        "resource_type": resource.type if resource else None,
        "resource_id": str(resource.id) if resource else None,
        "owner_type": owner.type if owner else None,
        "owner_id": owner.id if owner else None,
        "request_id": origin.request_id,
        "client_ip": origin.client_ip,
        "job_id": origin.job_id,
        "stripe_event_id": stripe.event_id,
        "stripe_customer_id": stripe.customer_id,
        "stripe_subscription_id": stripe.subscription_id,
        "stripe_invoice_id": stripe.invoice_id,
        "idempotency_key": idempotency_key,
    }
    for name, value in fields.items():  # what the columns store is what the hash covers
        column_type = AuditLog.__table__.c[name].type
        if isinstance(value, str) and isinstance(column_type, RedactedString):
            fields[name] = clean(value, column_type.length)
    sealed = chain.seal_fields(fields, redact(dict(data or {})), crypto.current())
    row = AuditLog(**fields, content_hash=sealed.content_hash, metadata_key_id=sealed.key_id,
                   metadata_ciphertext=sealed.ciphertext)
    row.remember_plaintext(sealed.plaintext)
    return row
