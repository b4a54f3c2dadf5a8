"""charge.refunded and refund.created/updated: adopt our refunds, record the others.

A refund an admin asked for through billwatch has its intent row (``metadata.billwatch_refund_id``)
from before Stripe heard of it, and its amount is already reserved in the payment's
``refunded_cents``. When its event arrives and the intent is still pending (a lost answer, a
crash), the intent is *adopted*: settled with Stripe's refund id and audited as
``billing.refund.issued`` in the name of the admin who asked, never ``stripe``. A refund made
elsewhere (the Dashboard: no metadata naming one of our rows) is recorded as
``billing.refund.recorded``, as is any remainder of ``amount_refunded`` beyond what we hold
(the current API no longer lists refunds on the charge). The payment row is locked first.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import or_, select

from billwatch.accounts.actor import OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.billing.refunds import RefundReason, settle_refund
from billwatch.db import after_commit
from billwatch.errors import Conflict
from billwatch.payments.gateway import refund_info
from billwatch.runtime import runtime_of
from billwatch.webhooks import shapes
from billwatch.webhooks.handlers.common import (
    STRIPE,
    EventContext,
    Handled,
    owner_for_customer,
    uuid_or_none,
)


class NotYetRecorded(Conflict):
    """The payment this event refers to is not in the database yet.

    Raising fails the event so Stripe retries it; by then the invoice event has committed. If it
    never does, the failure alert asks a human to look. (Our own refunds never raise it: their
    intent row commits before Stripe is called.)
    """


async def _locked_payment(ctx: EventContext, charge_id: str,
                          payment_intent_id: str | None) -> Transaction | None:
    matches = [Transaction.stripe_charge_id == charge_id]
    if payment_intent_id:
        matches.append(Transaction.stripe_payment_intent_id == payment_intent_id)
    result = await ctx.session.scalars(
        select(Transaction).where(Transaction.kind == TransactionKind.PAYMENT,
                                  Transaction.status == TransactionStatus.SUCCEEDED, or_(*matches))
        .order_by(Transaction.created_at).limit(1)
        .with_for_update().execution_options(populate_existing=True))
    return result.first()


async def charge_refunded(ctx: EventContext) -> Handled:
    """Record the refunds of a charge that billwatch did not issue itself."""
    charge = ctx.obj
    charge_id = shapes.required_str(charge, "id")
    customer_id = shapes.ref(charge.get("customer"))
    payment = await _locked_payment(ctx, charge_id, shapes.ref(charge.get("payment_intent")))
    if payment is None:
        refs = ctx.refs(customer_id=customer_id)
        if await owner_for_customer(ctx.session, customer_id) is None:
            return Handled.ignored(f"charge {charge_id} is not a billwatch payment", refs=refs)
        raise NotYetRecorded(f"refunded charge {charge_id} has no recorded payment yet",
                             code="payment_not_recorded")
    owner = OwnerRef(payment.owner_type, payment.owner_id)
    refs = ctx.refs(customer_id=customer_id, invoice_id=payment.stripe_invoice_id)
    known = set((await ctx.session.scalars(select(Transaction.stripe_refund_id).where(
        Transaction.refund_of_id == payment.id))).all())
    recorded: list[Transaction] = []
    adopted: list[Transaction] = []
    for refund in sorted(shapes.list_data(charge.get("refunds")), key=lambda r: r.get("created") or 0):
        refund_id = shapes.ref(refund.get("id"))
        if refund_id is None or refund_id in known:
            continue
        intent = await _our_intent(ctx, refund, payment)
        if intent is not None:
            adopted.append(await _adopt(ctx, intent, refund))
            continue
        if refund.get("status") in ("failed", "canceled"):
            continue
        recorded.append(_record(ctx, payment, owner, refs, refund_id=refund_id,
                                amount=shapes.required_int(refund, "amount"), refund=refund))
    if adopted:
        await ctx.session.refresh(payment)
    remainder = min(shapes.required_int(charge, "amount_refunded"), payment.amount_cents) \
        - payment.refunded_cents
    if remainder > 0:
        recorded.append(_record(ctx, payment, owner, refs, refund_id=None, amount=remainder,
                                refund={"reason": None}, total=payment.refunded_cents + remainder))
    if not recorded and not adopted:
        return Handled(owner=owner, refs=refs, note="every refund of this charge is already recorded")
    return Handled(owner=owner, refs=refs,
                   data={"refund_transaction_ids": [str(r.id) for r in recorded],
                         "adopted_refund_ids": [str(r.id) for r in adopted]})


async def refund_event(ctx: EventContext) -> Handled:
    """refund.created / refund.updated: settle our intent it names; others come via charge.refunded."""
    refund = ctx.obj
    refund_id = shapes.required_str(refund, "id")
    charge_id = shapes.ref(refund.get("charge"))
    payment = await _locked_payment(ctx, charge_id, shapes.ref(refund.get("payment_intent"))) \
        if charge_id else None
    intent = await _our_intent(ctx, refund, payment) if payment is not None else None
    if payment is None or intent is None:
        return Handled.ignored(f"refund {refund_id} names no billwatch refund intent; refunds made "
                               "elsewhere are recorded from charge.refunded",
                               refs=ctx.refs())
    refs = ctx.refs(invoice_id=payment.stripe_invoice_id)
    owner = OwnerRef(payment.owner_type, payment.owner_id)
    before = intent.status
    settled = await _adopt(ctx, intent, refund)
    if settled.status is before:
        return Handled(owner=owner, refs=refs, note=f"refund {refund_id} is already {before.value}")
    return Handled(owner=owner, refs=refs, data={"adopted_refund_ids": [str(settled.id)]})


async def _our_intent(ctx: EventContext, refund: dict[str, Any],
                      payment: Transaction) -> Transaction | None:
    """Our refund row that a Stripe refund's metadata names, if it belongs to this payment."""
    intent_id = uuid_or_none(shapes.metadata(refund).get("billwatch_refund_id"))
    if intent_id is None:
        return None
    row = await ctx.session.get(Transaction, intent_id, populate_existing=True)
    if row is None or row.kind is not TransactionKind.REFUND or row.refund_of_id != payment.id:
        return None  # not one of ours (another installation sharing the account): record it
    return row


async def _adopt(ctx: EventContext, intent: Transaction, refund: dict[str, Any]) -> Transaction:
    """Settle a pending intent from Stripe's word, in the name of the admin who asked for it."""
    if intent.status is not TransactionStatus.PENDING:
        return intent
    return await settle_refund(ctx.session, intent.id, info=refund_info(refund), event_id=ctx.event_id)


def _record(ctx: EventContext, payment: Transaction, owner: OwnerRef, refs: StripeRefs, *,
            refund_id: str | None, amount: int, refund: dict[str, Any],
            total: int | None = None) -> Transaction:
    amount = min(amount, payment.refundable_cents)
    reason = _reason(refund.get("reason"))
    key = f"stripe-refund:{refund_id}" if refund_id else \
        f"stripe-charge:{payment.stripe_charge_id or payment.id}:refunded-to:{total}"
    pending = refund.get("status") == "pending"
    row = Transaction(
        id=uuid.uuid4(), owner_type=payment.owner_type, owner_id=payment.owner_id,
        subscription_id=payment.subscription_id, kind=TransactionKind.REFUND,
        status=TransactionStatus.PENDING if pending else TransactionStatus.SUCCEEDED,
        amount_cents=amount, currency=payment.currency, refund_of_id=payment.id,
        plan_code=payment.plan_code, stripe_invoice_id=payment.stripe_invoice_id,
        stripe_charge_id=payment.stripe_charge_id,
        stripe_payment_intent_id=payment.stripe_payment_intent_id, stripe_refund_id=refund_id,
        reason=reason, note="refunded in Stripe, not through billwatch", idempotency_key=key)
    payment.refunded_cents += amount
    ctx.session.add(row)
    recorder.record(
        ctx.session, AuditEvent.REFUND_RECORDED, actor=STRIPE, owner=owner,
        resource=Resource("transaction", payment.id), stripe=refs, idempotency_key=key,
        data={"amount_cents": amount, "currency": payment.currency, "reason": reason,
              "refund_transaction_id": str(row.id), "payment_transaction_id": str(payment.id),
              "stripe_refund_id": refund_id, "charge_id": payment.stripe_charge_id,
              "refundable_remaining_cents": payment.refundable_cents})
    metrics = runtime_of(ctx.session).metrics
    after_commit(ctx.session, lambda: metrics.refund_issued(reason, amount))
    return row


def _reason(stripe_reason: Any) -> str:
    """Stripe's refund reason on our closed set (``expired_uncaptured_charge`` and none: other)."""
    try:
        return RefundReason(stripe_reason).value
    except ValueError:
        return RefundReason.OTHER.value
