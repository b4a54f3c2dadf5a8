"""Refunds: an admin gives back all or part of a payment, in two phases around Stripe.

1. One transaction reserves the amount on the payment with a conditional ``UPDATE`` (so
   concurrent refunds can never exceed it, on PostgreSQL and SQLite alike), writes the refund
   row as a ``pending`` intent carrying its deterministic Stripe idempotency key, and the
   ``billing.refund.requested`` audit row, and commits.
2. Stripe is called with no transaction open and no lock held.
3. A second transaction settles the intent: ``succeeded`` with the Stripe refund id and
   ``billing.refund.issued`` (the admin as actor), or, when Stripe refused, ``failed``, the
   reservation released and ``billing.refund.failed``.

An intent left pending (a timeout, a lost answer, a crash, a failed settlement commit) is
settled later by :func:`resume_refund`: the client's retry with the same ``Idempotency-Key``,
the sweeper (:mod:`billwatch.billing.refund_sweeper`) or the refund's webhook, always in the
name of the admin who asked for it.
"""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import User
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.models import RefundReason as RefundReason  # defined beside the other enums
from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.db import Database, after_commit
from billwatch.errors import BillwatchError, Conflict, GatewayTimeout, NotFound, PaymentProviderError
from billwatch.payments.gateway import OutcomeUnknown, PaymentsGateway, RefundInfo
from billwatch.runtime import runtime_of


class RefundSettlementPending(BillwatchError):
    """Stripe answered but recording the answer failed; the intent stays pending and is settled."""

    status_code = 503
    code = "refund_settlement_pending"


STRIPE_FAILED = ("failed", "canceled")


def refund_key(actor: Actor, payment_id: uuid.UUID, client_key: str) -> str:
    """The Stripe idempotency key of one admin's refund request: the same for every retry."""
    digest = hashlib.sha256(f"{actor.user_id}:{payment_id}:{client_key}".encode()).hexdigest()
    return f"refund:{digest[:40]}"


async def issue_refund(db: Database, gateway: PaymentsGateway, *, actor: Actor,
                       transaction_id: uuid.UUID, amount_cents: int | None, reason: RefundReason,
                       client_key: str, note: str | None = None) -> Transaction:
    """Refund part or all of a payment: intent, Stripe, settlement; retried keys refund once."""
    key = refund_key(actor, transaction_id, client_key)
    async with db.unit_of_work() as session:
        refund, created = await reserve_refund(
            session, actor=actor, payment_id=transaction_id, amount_cents=amount_cents,
            reason=reason, note=note, key=key)
    if refund.status is TransactionStatus.FAILED:
        raise PaymentProviderError("this refund request was refused by Stripe; send a new "
                                   "Idempotency-Key to try again", code="refund_failed")
    if refund.status is TransactionStatus.SUCCEEDED:
        return refund
    # A retry of an earlier attempt looks at Stripe first: that attempt may have refunded.
    return await resume_refund(db, gateway, refund.id, look_first=not created)


async def reserve_refund(session: AsyncSession, *, actor: Actor, payment_id: uuid.UUID,
                         amount_cents: int | None, reason: RefundReason, note: str | None,
                         key: str) -> tuple[Transaction, bool]:
    """Phase 1: the existing intent for ``key`` (False), or a new one with its amount reserved
    (True); 409 when the amount does not fit."""
    existing = (await session.scalars(select(Transaction).where(
        Transaction.idempotency_key == key))).first()
    if existing is not None:
        return existing, False
    payment = await session.get(Transaction, payment_id)
    if payment is None:
        raise NotFound(f"transaction {payment_id} not found", code="transaction_not_found")
    if payment.kind is not TransactionKind.PAYMENT or payment.status is not TransactionStatus.SUCCEEDED:
        raise Conflict("only a succeeded payment can be refunded", code="not_refundable")
    amount = payment.refundable_cents if amount_cents is None else amount_cents
    reserved = amount > 0 and await _reserve(session, payment_id, amount)
    if not reserved:
        await session.refresh(payment)
        raise Conflict(f"refund of {amount} exceeds the refundable remainder "
                       f"{payment.refundable_cents} {payment.currency}", code="refund_too_large")
    await session.refresh(payment)
    refund = Transaction(
        id=uuid.uuid4(), owner_type=payment.owner_type, owner_id=payment.owner_id,
        subscription_id=payment.subscription_id, kind=TransactionKind.REFUND,
        status=TransactionStatus.PENDING, amount_cents=amount, currency=payment.currency,
        refund_of_id=payment.id, plan_code=payment.plan_code,
        stripe_invoice_id=payment.stripe_invoice_id, stripe_charge_id=payment.stripe_charge_id,
        stripe_payment_intent_id=payment.stripe_payment_intent_id, reason=reason.value, note=note,
        created_by_user_id=actor.user_id, idempotency_key=key)
    session.add(refund)
    await session.flush()
    recorder.record(
        session, AuditEvent.REFUND_REQUESTED, actor=actor, owner=_owner(payment),
        resource=Resource("transaction", payment.id),
        stripe=StripeRefs(invoice_id=payment.stripe_invoice_id), idempotency_key=key,
        data={"amount_cents": amount, "currency": payment.currency, "reason": reason.value,
              "note": note, "refund_transaction_id": str(refund.id),
              "refundable_remaining_cents": payment.refundable_cents})
    return refund, True


async def _reserve(session: AsyncSession, payment_id: uuid.UUID, amount: int) -> bool:
    """Add ``amount`` to the payment's refunded total only if it still fits, in one statement."""
    result = await session.execute(
        update(Transaction)
        .where(Transaction.id == payment_id, Transaction.kind == TransactionKind.PAYMENT,
               Transaction.status == TransactionStatus.SUCCEEDED,
               Transaction.refunded_cents + amount <= Transaction.amount_cents)
        .values(refunded_cents=Transaction.refunded_cents + amount)
        .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0) == 1


async def resume_refund(db: Database, gateway: PaymentsGateway, refund_id: uuid.UUID, *,
                        look_first: bool) -> Transaction:
    """Phases 2 and 3 for a pending intent: ask Stripe (looking for an earlier answer first
    when one may exist), then settle. Stripe's silence leaves it pending and raises."""
    async with db.unit_of_work() as session:
        refund = await session.get(Transaction, refund_id)
        if refund is None:
            raise NotFound(f"refund {refund_id} not found", code="transaction_not_found")
    if refund.status is not TransactionStatus.PENDING:
        return refund
    try:
        info = None
        if look_first:
            info = await gateway.find_refund(
                charge_id=refund.stripe_charge_id, payment_intent_id=refund.stripe_payment_intent_id,
                stripe_refund_id=refund.stripe_refund_id, billwatch_refund_id=str(refund.id))
        if info is None:
            info = await gateway.refund(
                charge_id=refund.stripe_charge_id, payment_intent_id=refund.stripe_payment_intent_id,
                amount_cents=refund.amount_cents, reason=refund.reason or RefundReason.OTHER.value,
                idempotency_key=refund.idempotency_key or f"refund:{refund.id}",
                metadata={"billwatch_refund_id": str(refund.id),
                          "billwatch_payment_id": str(refund.refund_of_id)})
    except (OutcomeUnknown, GatewayTimeout):
        raise  # the intent stays pending; the sweeper or the webhook settles it
    except PaymentProviderError as refused:
        async with db.unit_of_work() as session:
            await settle_refund(session, refund_id, failure=refused.detail)
        raise
    try:
        async with db.unit_of_work() as session:
            return await settle_refund(session, refund_id, info=info)
    except SQLAlchemyError as error:
        raise RefundSettlementPending(
            "Stripe accepted the refund but recording it failed; it stays pending and is "
            "settled by the sweeper (or retry with the same Idempotency-Key)") from error


async def settle_refund(session: AsyncSession, refund_id: uuid.UUID, *, info: RefundInfo | None = None,
                        failure: str | None = None, event_id: str | None = None) -> Transaction:
    """Phase 3: a pending intent becomes succeeded or failed, once, in its admin's name.

    A conditional ``UPDATE ... WHERE status = 'pending'`` makes settling idempotent: the request,
    the sweeper and the webhook may all try, one wins, the others change nothing.
    """
    failed = failure is not None or (info is not None and info.status in STRIPE_FAILED)
    stripe_pending = info is not None and not failed and info.status != "succeeded"
    status = TransactionStatus.FAILED if failed else (
        TransactionStatus.PENDING if stripe_pending else TransactionStatus.SUCCEEDED)
    values: dict[str, object] = {"status": status}
    if info is not None:
        values["stripe_refund_id"] = info.id
    if failed:
        values["failure_code"] = "stripe_refused"
    result = await session.execute(
        update(Transaction).where(Transaction.id == refund_id,
                                  Transaction.status == TransactionStatus.PENDING)
        .values(**values).execution_options(synchronize_session=False))
    refund = await session.get(Transaction, refund_id, populate_existing=True)
    if refund is None:
        raise NotFound(f"refund {refund_id} not found", code="transaction_not_found")
    if int(getattr(result, "rowcount", 0) or 0) != 1 or stripe_pending:
        return refund  # settled by someone else, or Stripe itself still works on it
    if failed:
        await session.execute(
            update(Transaction).where(Transaction.id == refund.refund_of_id)
            .values(refunded_cents=Transaction.refunded_cents - refund.amount_cents)
            .execution_options(synchronize_session=False))
    payment = await session.get(Transaction, refund.refund_of_id, populate_existing=True)
    assert payment is not None
    actor = await original_actor(session, refund)
    data = {"amount_cents": refund.amount_cents, "currency": refund.currency,
            "reason": refund.reason, "note": refund.note, "refund_transaction_id": str(refund.id),
            "stripe_refund_id": info.id if info else None,
            "refundable_remaining_cents": payment.refundable_cents}
    recorder.record(
        session, AuditEvent.REFUND_FAILED if failed else AuditEvent.REFUND_ISSUED, actor=actor,
        outcome=Outcome.FAILURE if failed else Outcome.SUCCESS, owner=_owner(payment),
        resource=Resource("transaction", payment.id),
        stripe=StripeRefs(event_id=event_id, invoice_id=payment.stripe_invoice_id),
        idempotency_key=refund.idempotency_key, reason=failure,
        data=data)
    if not failed:
        reason, amount = refund.reason or RefundReason.OTHER.value, refund.amount_cents
        metrics = runtime_of(session).metrics
        after_commit(session, lambda: metrics.refund_issued(reason, amount))
    return refund


async def original_actor(session: AsyncSession, refund: Transaction) -> Actor | None:
    """The admin who asked for ``refund``: every later step is recorded in their name."""
    if refund.created_by_user_id is None:
        return None
    user = await session.get(User, refund.created_by_user_id)
    return Actor(user.id, user.role) if user is not None else None


def _owner(payment: Transaction) -> OwnerRef:
    return OwnerRef(payment.owner_type, payment.owner_id)
