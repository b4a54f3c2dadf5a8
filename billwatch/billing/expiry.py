"""Overrides that end on their own (free grants, timed discounts or exemptions) and the sweeper
of overrides left half done.

Run by the scheduler (the embedded runner's tick and a Celery beat task). Each override is
claimed by the conditional UPDATE of :func:`~billwatch.billing.overrides.claim_active`, in a
transaction of its own, so two schedulers (or a scheduler and an admin's revoke) never end one
twice: the loser's UPDATE matches no row and it moves on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from billwatch.accounts.actor import Actor, SystemActor
from billwatch.accounts.models import Role
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.billing import overrides
from billwatch.billing.models import (
    ADJUSTMENT_KINDS,
    BillingOverride,
    OverrideKind,
    OverrideState,
)
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.errors import PaymentProviderError
from billwatch.payments.gateway import PaymentsGateway

log = structlog.get_logger(__name__)

SCHEDULER = SystemActor("job:expire-overrides")


async def expire_free_grants(db: Database, *, now: datetime | None = None) -> int:
    """End every free grant whose end date has passed, exactly once however many schedulers run
    (each grant is claimed by a conditional UPDATE; a lost race claims nothing)."""
    now = now or utcnow()
    async with db.unit_of_work() as session:
        due = list((await session.scalars(select(BillingOverride.id).where(
            BillingOverride.kind == OverrideKind.FREE_SUBSCRIPTION,
            BillingOverride.state == OverrideState.ACTIVE,
            BillingOverride.ends_at <= now))).all())
    expired = 0
    for override_id in due:
        async with db.unit_of_work() as session:
            if not await overrides.claim_active(session, override_id, target=OverrideState.EXPIRED,
                                values={"expired_at": now}):
                continue
            override = await overrides.get_override(session, override_id)
            assert override.ends_at is not None
            ended = await overrides.end_free_grant(session, override, at=override.ends_at)
            recorder.record(session, AuditEvent.FREE_SUBSCRIPTION_EXPIRED, actor=SCHEDULER,
                            owner=overrides.owner_of(override),
                            resource=Resource("billing_override", override.id),
                            data={"plan": override.plan_code,
                                  "ends_at": override.ends_at.isoformat(),
                                  "ended_subscription_id": ended})
        expired += 1
    return expired


async def expire_due_adjustments(db: Database, settings: Settings, *,
                                 gateway: PaymentsGateway | None = None,
                                 now: datetime | None = None) -> int:
    """Remove at Stripe every discount or exemption whose ``ends_at`` has passed (claimed one
    by one, so a second scheduler or a concurrent revoke never removes one twice)."""
    now = now or utcnow()
    async with db.unit_of_work() as session:
        due = list((await session.scalars(select(BillingOverride.id).where(
            BillingOverride.kind.in_(ADJUSTMENT_KINDS),
            BillingOverride.state == OverrideState.ACTIVE,
            BillingOverride.ends_at <= now))).all())
    if due and gateway is None:
        gateway = PaymentsGateway(settings)
    expired = 0
    for override_id in due:
        assert gateway is not None
        async with db.unit_of_work() as session:
            if not await overrides.claim_active(session, override_id,
                                                target=OverrideState.REVOKING,
                                                values={"state_changed_at": now}):
                continue
            override = await overrides.get_override(session, override_id)
        try:
            await overrides.remove_at_stripe(db, gateway, override, actor=SCHEDULER,
                                             reason="ends_at reached",
                                             event=AuditEvent.OVERRIDE_EXPIRED)
        except PaymentProviderError as error:  # back to active: the next tick tries again
            log.warning("override_expiry_failed", override_id=str(override_id), code=error.code)
            continue
        expired += 1
    return expired


STALE_GRACE = timedelta(minutes=5)
"""An override ``pending`` or ``revoking`` for longer than this lost its process between the
Stripe call and the settlement (a request's Stripe budget is far shorter)."""


async def resume_stale(db: Database, settings: Settings, *, gateway: PaymentsGateway | None = None,
                       now: datetime | None = None) -> int:
    """Finish what a dead process left half done: repeat its Stripe call with the same
    idempotency key and settle it, attributed to the admin who asked (settlements are
    conditional, so two sweepers settle and audit it once)."""
    cutoff = (now or utcnow()) - STALE_GRACE
    async with db.unit_of_work() as session:
        stale = list((await session.scalars(select(BillingOverride).where(
            BillingOverride.kind.in_(ADJUSTMENT_KINDS),
            BillingOverride.state.in_((OverrideState.PENDING, OverrideState.REVOKING)),
            BillingOverride.state_changed_at < cutoff))).all())
    resumed = 0
    for override in stale:
        gateway = gateway or PaymentsGateway(settings)
        try:
            if override.state is OverrideState.PENDING:
                await overrides.apply_pending(db, gateway, override, actor=Actor(
                    override.created_by_user_id, Role.ADMIN))
            elif override.revoked_by_user_id is not None:
                await overrides.remove_at_stripe(
                    db, gateway, override, actor=Actor(override.revoked_by_user_id, Role.ADMIN),
                    reason=override.revoke_reason or "", event=AuditEvent.OVERRIDE_REVOKED)
            else:
                await overrides.remove_at_stripe(db, gateway, override, actor=SCHEDULER,
                                                 reason="ends_at reached",
                                                 event=AuditEvent.OVERRIDE_EXPIRED)
        except PaymentProviderError as error:
            log.warning("override_resume_failed", override_id=str(override.id), code=error.code)
            continue
        resumed += 1
    return resumed


async def expire_due_overrides(db: Database, settings: Settings, *, now: datetime | None = None,
                               gateway: PaymentsGateway | None = None) -> dict[str, Any]:
    """One scheduler pass: expire due free grants, remove due discounts and exemptions, and
    finish overrides a dead process left between its Stripe call and its settlement."""
    now = now or utcnow()
    grants = await expire_free_grants(db, now=now)
    adjustments = await expire_due_adjustments(db, settings, gateway=gateway, now=now)
    resumed = await resume_stale(db, settings, gateway=gateway, now=now)
    return {"free_grants_expired": grants, "adjustments_expired": adjustments,
            "intents_resumed": resumed}
