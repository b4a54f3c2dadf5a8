"""The audit recorder: adds one row to the caller's session and never commits.

The row rides in the same transaction as the change it records, so either both are durable or
neither is. Failures are recorded by the caller in a fresh transaction after the rollback.

It fails closed. The row is built, redacted, encrypted and hashed right here, so a broken key
ring raises at once, inside the operation; the INSERT happens at the caller's flush or commit,
so a database that refuses the row fails the commit and rolls the business change back with it
(no refund without its audit row). Either way ``audit_write_failures_total`` rises and every
write-failure hook of the session's runtime is told, which is where the alert hangs. Committed
rows are counted in ``billing_audit_writes_total{outcome}`` after commit.

Everything a recorded row sets off comes from the runtime of the session's database
(:mod:`billwatch.runtime`): the keys that seal it, the listeners (the alert rules) told of it in
its transaction, the hooks told when it cannot be written, the counters it moves. A session
without a runtime cannot record.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Engine, Insert, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.audit import chain
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.context import current_origin
from billwatch.db import after_commit, utcnow
from billwatch.redacted import RedactedString, clean
from billwatch.redaction import redact, redact_text
from billwatch.runtime import Runtime, runtime_of, runtime_of_connection

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AuditWriteFailure:
    """An audit row that could not be written; the operation it belonged to failed too."""

    event_types: tuple[str, ...]
    error: BaseException
    stage: str
    """``record`` (building/encrypting the row) or ``insert`` (the database refused it)."""


def write_failed(runtime: Runtime, failure: AuditWriteFailure) -> None:
    """Count, log and tell ``runtime``'s write-failure hooks; a hook that raises is logged."""
    runtime.metrics.audit_write_failed()
    log.error("audit_write_failed", event_types=list(failure.event_types), stage=failure.stage,
              error_type=type(failure.error).__name__, error=redact_text(str(failure.error)))
    for hook in runtime.write_failure_hooks:
        try:
            hook(runtime, failure)
        except Exception:
            log.exception("audit_write_failure_hook_failed", hook=repr(hook))


def _refused(context: ExceptionContext) -> None:
    """A failed INSERT into ``audit_logs`` is a write failure of the failing session's runtime.

    The statement is matched on its table, not its text: the ORM's INSERT is compiled from
    :class:`AuditLog`'s table, whichever partition the database then routes the row to.
    """
    compiled = getattr(context.execution_context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    if not (isinstance(statement, Insert) and statement.table is AuditLog.__table__):
        return
    runtime = runtime_of_connection(context.connection)
    if runtime is None:  # not a session's row (a maintenance script): nobody to tell
        return
    parameters = getattr(context.execution_context, "compiled_parameters", None) or []
    types = sorted({str(p["event_type"]) for p in parameters
                    if isinstance(p, Mapping) and p.get("event_type")})
    write_failed(runtime, AuditWriteFailure(tuple(types), context.original_exception, "insert"))


def watch_engine(engine: Engine) -> None:
    """Watch ``engine`` for refused audit rows (once, however many runtimes share it)."""
    if not event.contains(engine, "handle_error", _refused):
        event.listen(engine, "handle_error", _refused)


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
    runtime = runtime_of(session)
    try:
        row = _build(event, runtime.keys, actor=actor, outcome=outcome, owner=owner,
                     resource=resource, stripe=stripe or StripeRefs(),
                     idempotency_key=idempotency_key, reason=reason, data=data)
    except Exception as error:
        write_failed(runtime, AuditWriteFailure((AuditEvent(event).value,), error, "record"))
        raise
    session.add(row)
    after_commit(session, partial(runtime.metrics.audit_written, row.outcome.value))
    for listener in runtime.audit_listeners:
        listener(session, row)
    return row


def _build(event: AuditEvent, keys: AuditKeys, *, actor: Actor | SystemActor | None, outcome: Outcome,
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
    sealed = chain.seal_fields(fields, redact(dict(data or {})), keys)
    row = AuditLog(**fields, content_hash=sealed.content_hash, metadata_key_id=sealed.key_id,
                   metadata_ciphertext=sealed.ciphertext)
    row.remember_plaintext(sealed.plaintext)
    return row
