"""The audit recorder: adds one row to the caller's session and never commits.

The row rides in the same transaction as the change it records, so either both are durable or
neither is. Failures are recorded by the caller in a fresh transaction after the rollback.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef, SystemActor
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.audit.redaction import redact, redact_text
from billwatch.context import current_origin

AuditListener = Callable[[AsyncSession, AuditLog], None]
_listeners: list[AuditListener] = []


def subscribe(listener: AuditListener) -> AuditListener:
    """Call ``listener(session, row)`` for every recorded row, inside the same transaction.

    Alert rules hang off the audit trail this way: an alert row rides in the transaction of the
    event that raised it, so a rolled-back event never alerts. Listeners must only add to the
    session (and register after-commit work); they must not commit or do I/O.
    """
    if listener not in _listeners:
        _listeners.append(listener)
    return listener


def unsubscribe(listener: AuditListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


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
    origin = current_origin()
    stripe = stripe or StripeRefs()
    user_actor = actor if isinstance(actor, Actor) else None
    row = AuditLog(
        id=uuid.uuid4(),
        event_type=event.value,
        action=event.value.rsplit(".", 1)[-1],
        outcome=outcome,
        reason=redact_text(reason) if reason else None,
        actor_user_id=user_actor.user_id if user_actor else None,
        actor_role=user_actor.role if user_actor else None,
        actor_name=actor.name if isinstance(actor, SystemActor) else None,
        manager_assignment_id=user_actor.via_assignment_id if user_actor else None,
        resource_type=resource.type if resource else None,
        resource_id=str(resource.id) if resource else None,
        owner_type=owner.type if owner else None,
        owner_id=owner.id if owner else None,
        request_id=origin.request_id,
        client_ip=origin.client_ip,
        job_id=origin.job_id,
        stripe_event_id=stripe.event_id,
        stripe_customer_id=stripe.customer_id,
        stripe_subscription_id=stripe.subscription_id,
        stripe_invoice_id=stripe.invoice_id,
        idempotency_key=idempotency_key,
        data=redact(dict(data or {})),
    )
    session.add(row)
    for listener in list(_listeners):
        listener(session, row)
    return row
