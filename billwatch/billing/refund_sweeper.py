"""The refund sweeper: no refund intent stays pending after a crash, a timeout or a lost answer.

Run by the embedded runner's tick and by a Celery beat task. Intents older than
``refund_sweep_grace_seconds`` (longer than any request still working on them) are resumed:
Stripe is asked whether it holds the refund (by id, else by our metadata) and, only if not,
asked again with the same idempotency key; then the intent is settled in its admin's name.
Refunds recorded from Stripe's own webhooks (no admin) are not ours to retry and are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.billing.refunds import resume_refund
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.payments.gateway import PaymentsGateway

log = structlog.get_logger(__name__)
BATCH = 100


@dataclass(frozen=True, slots=True)
class SweepResult:
    settled: int
    still_pending: int


async def sweep_pending_refunds(db: Database, settings: Settings, *,
                                gateway: PaymentsGateway | None = None,
                                now: datetime | None = None) -> SweepResult:
    """Resume every refund intent pending past the grace period; Stripe trouble waits for the next run."""
    cutoff = (now or utcnow()) - timedelta(seconds=settings.refund_sweep_grace_seconds)
    async with db.unit_of_work() as session:
        pending = list((await session.scalars(
            select(Transaction.id).where(
                Transaction.kind == TransactionKind.REFUND,
                Transaction.status == TransactionStatus.PENDING,
                Transaction.created_by_user_id.is_not(None), Transaction.created_at <= cutoff)
            .order_by(Transaction.created_at).limit(BATCH))).all())
    if not pending:
        return SweepResult(0, 0)
    gateway = gateway or PaymentsGateway(settings)
    settled = 0
    for refund_id in pending:
        try:
            refund = await resume_refund(db, gateway, refund_id, look_first=True)
        except Exception as error:  # one refund's trouble must not stop the others
            log.warning("refund_sweep_deferred", refund_id=str(refund_id),
                        error_type=type(error).__name__)
            continue
        settled += refund.status is not TransactionStatus.PENDING
    log.info("refund_sweep", settled=settled, still_pending=len(pending) - settled)
    return SweepResult(settled, len(pending) - settled)
