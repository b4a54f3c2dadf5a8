"""Refunds: an admin gives back all or part of a payment."""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.db import after_commit
from billwatch.errors import Conflict, NotFound
from billwatch.metrics import billing as billing_metrics
from billwatch.payments.gateway import PaymentsGateway


class RefundReason(StrEnum):
    """The closed set of refund reasons; metrics label by it, so it must stay small."""

    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    SERVICE_ISSUE = "service_issue"
    BILLING_ERROR = "billing_error"
    OTHER = "other"


async def issue_refund(session: AsyncSession, gateway: PaymentsGateway, *, actor: Actor,
                       transaction_id: uuid.UUID, amount_cents: int | None,
                       reason: RefundReason, note: str | None = None) -> Transaction:
    """Refund part or all of a payment; the caller's unit of work commits."""
    payment = (await session.scalars(
        select(Transaction).where(Transaction.id == transaction_id).with_for_update())).first()
    if payment is None:
        raise NotFound(f"transaction {transaction_id} not found", code="transaction_not_found")
    if payment.kind is not TransactionKind.PAYMENT or payment.status is not TransactionStatus.SUCCEEDED:
        raise Conflict("only a succeeded payment can be refunded", code="not_refundable")
    amount = payment.refundable_cents if amount_cents is None else amount_cents
    if amount <= 0 or amount > payment.refundable_cents:
        raise Conflict(f"refund of {amount} exceeds the refundable remainder "
                       f"{payment.refundable_cents} {payment.currency}", code="refund_too_large")
    refund_id = uuid.uuid4()
    key = f"refund:{refund_id}"
    info = await gateway.refund(
        charge_id=payment.stripe_charge_id, payment_intent_id=payment.stripe_payment_intent_id,
        amount_cents=amount, reason=reason.value, idempotency_key=key,
        metadata={"billwatch_refund_id": str(refund_id), "billwatch_payment_id": str(payment.id)})
    refund = Transaction(
        id=refund_id, owner_type=payment.owner_type, owner_id=payment.owner_id,
        subscription_id=payment.subscription_id, kind=TransactionKind.REFUND,
        status=TransactionStatus.SUCCEEDED if info.status == "succeeded" else TransactionStatus.PENDING,
        amount_cents=amount, currency=payment.currency, refund_of_id=payment.id,
        plan_code=payment.plan_code, stripe_charge_id=payment.stripe_charge_id,
        stripe_payment_intent_id=payment.stripe_payment_intent_id, stripe_refund_id=info.id,
        reason=reason.value, note=note, created_by_user_id=actor.user_id, idempotency_key=key)
    payment.refunded_cents += amount
    session.add(refund)
    await session.flush()
    recorder.record(
        session, AuditEvent.REFUND_ISSUED, actor=actor,
        owner=OwnerRef(payment.owner_type, payment.owner_id),
        resource=Resource("transaction", payment.id),
        stripe=StripeRefs(invoice_id=payment.stripe_invoice_id), idempotency_key=key,
        data={"amount_cents": amount, "currency": payment.currency, "reason": reason.value,
              "note": note, "refund_transaction_id": str(refund.id),
              "stripe_refund_id": info.id, "refundable_remaining_cents": payment.refundable_cents})
    after_commit(session, lambda: billing_metrics.refund_issued(reason.value, amount))
    return refund
