"""invoice.payment_succeeded / invoice.paid / invoice.payment_failed: money in, or not.

A paid invoice becomes one payment transaction, whichever of the two "paid" events arrives first
and however often either is delivered: the transaction's idempotency key is derived from the
invoice (``stripe-invoice:<id>:payment``) and the row is inserted with ``ON CONFLICT DO
NOTHING``, so of two concurrent events of one invoice exactly one books it. No subscription lock
is taken: invoices change no subscription state, and payments of one subscription must not queue
behind each other. Each failed attempt becomes one failed transaction keyed by Stripe's
``attempt_count``, and its audit row carries what an alert rule needs: amount, currency,
attempt count, failure and decline codes, invoice id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table

from billwatch.accounts.actor import OwnerRef
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.db import after_commit
from billwatch.metrics import labels
from billwatch.runtime import runtime_of
from billwatch.webhooks import shapes
from billwatch.webhooks.handlers.common import (
    STRIPE,
    EventContext,
    Handled,
    SubscriptionRef,
    UnknownPlan,
    find_subscription,
    owner_for_customer,
    owner_of,
    plan_for_price,
)
from billwatch.webhooks.handlers.subscriptions import create_subscription
from billwatch.webhooks.store import insert_once_statement

TRANSACTIONS = cast(Table, Transaction.__table__)


async def _subscription_and_owner(ctx: EventContext, invoice: dict[str, Any], customer_id: str | None,
                                  ) -> tuple[SubscriptionRef | None, OwnerRef | None]:
    """The invoice's subscription (fetched from Stripe if no event created it yet) and owner."""
    stripe_sub_id = shapes.invoice_subscription_id(invoice)
    row = await find_subscription(ctx.session, stripe_sub_id) if stripe_sub_id else None
    if row is not None:
        return row, row.owner
    owner = await owner_for_customer(ctx.session, customer_id, shapes.metadata(invoice))
    if owner is None or stripe_sub_id is None:
        return None, owner
    # Stripe sends invoice and subscription events in no particular order: the subscription's
    # own event may still be on its way, so read it now rather than book a payment without it.
    fetched = ctx.subscription_from_stripe(stripe_sub_id)
    created, _new = await create_subscription(ctx, fetched, owner, stamp=ctx.created)
    return SubscriptionRef.of(created), owner_of(created)


async def _insert_once(ctx: EventContext, **values: Any) -> uuid.UUID | None:
    """Insert a transaction unless its idempotency key exists; its id, or None if it did."""
    statement = insert_once_statement(ctx.session.get_bind().dialect.name, TRANSACTIONS,
                                      "idempotency_key")
    inserted: uuid.UUID | None = (await ctx.session.execute(
        statement, {"id": uuid.uuid4(), **values})).scalar_one_or_none()
    return inserted


def _plan_code(ctx: EventContext, row: SubscriptionRef | None, invoice: dict[str, Any]) -> str | None:
    if row is not None:
        return row.plan_code
    try:
        return plan_for_price(ctx.settings, shapes.invoice_price_id(invoice)).code
    except UnknownPlan:
        return None  # a one-off invoice: no plan to attribute it to


@dataclass(frozen=True, slots=True)
class _InvoiceParty:
    """Whose invoice this is: the invoice id, its subscription (if any), owner and Stripe refs."""

    invoice_id: str
    row: SubscriptionRef | None
    owner: OwnerRef
    refs: StripeRefs


async def _invoice_party(ctx: EventContext, invoice: dict[str, Any]) -> _InvoiceParty | Handled:
    """The invoice's owner and references, or the ``ignored`` outcome for a customer not ours."""
    invoice_id = shapes.required_str(invoice, "id")
    customer_id = shapes.ref(invoice.get("customer"))
    row, owner = await _subscription_and_owner(ctx, invoice, customer_id)
    refs = ctx.refs(customer_id=customer_id, invoice_id=invoice_id,
                    subscription_id=row.stripe_subscription_id if row else None)
    if owner is None:
        return Handled.ignored(f"no billwatch owner for Stripe customer {customer_id}", refs=refs)
    return _InvoiceParty(invoice_id, row, owner, refs)


async def invoice_paid(ctx: EventContext) -> Handled:
    """Record the payment of an invoice, once per invoice."""
    invoice = ctx.obj
    party = await _invoice_party(ctx, invoice)
    if isinstance(party, Handled):
        return party
    invoice_id, row, owner, refs = party.invoice_id, party.row, party.owner, party.refs
    amount = shapes.required_int(invoice, "amount_paid")
    if amount <= 0:
        return Handled.ignored("nothing was paid (zero-amount invoice)", refs=refs, owner=owner)
    key = f"stripe-invoice:{invoice_id}:payment"
    currency = shapes.required_str(invoice, "currency").lower()
    plan_code = _plan_code(ctx, row, invoice)
    charge_id = shapes.invoice_charge_id(invoice)
    payment_id = await _insert_once(
        ctx, owner_type=owner.type, owner_id=owner.id, subscription_id=row.id if row else None,
        kind=TransactionKind.PAYMENT, status=TransactionStatus.SUCCEEDED, amount_cents=amount,
        currency=currency, plan_code=plan_code, stripe_invoice_id=invoice_id,
        stripe_charge_id=charge_id, stripe_payment_intent_id=shapes.invoice_payment_intent_id(invoice),
        attempt_count=_attempts(invoice), idempotency_key=key)
    if payment_id is None:
        return Handled(owner=owner, refs=refs, note="payment already recorded")
    recorder.record(
        ctx.session, AuditEvent.PAYMENT_SUCCEEDED, actor=STRIPE, owner=owner,
        resource=Resource("transaction", payment_id), stripe=refs, idempotency_key=key,
        data={"amount_cents": amount, "currency": currency, "transaction_id": str(payment_id),
              "invoice_id": invoice_id, "plan": plan_code,
              "billing_reason": invoice.get("billing_reason"), "attempt_count": _attempts(invoice),
              "charge_id": charge_id})
    owner_type, label = owner.type.value, plan_code or "none"
    metrics = runtime_of(ctx.session).metrics
    after_commit(ctx.session, lambda: metrics.payment_succeeded(owner_type, label, amount))
    return Handled(owner=owner, refs=refs, data={"transaction_id": str(payment_id)})


async def invoice_payment_failed(ctx: EventContext) -> Handled:
    """Record one failed attempt to pay an invoice, with everything an alert needs."""
    invoice = ctx.obj
    party = await _invoice_party(ctx, invoice)
    if isinstance(party, Handled):
        return party
    invoice_id, row, owner, refs = party.invoice_id, party.row, party.owner, party.refs
    attempt = _attempts(invoice)
    key = f"stripe-invoice:{invoice_id}:attempt:{attempt}"
    amount = shapes.required_int(invoice, "amount_due")
    currency = shapes.required_str(invoice, "currency").lower()
    failure = shapes.invoice_failure(invoice)
    category = _failure_category(failure)
    plan_code = _plan_code(ctx, row, invoice)
    attempt_id = await _insert_once(
        ctx, owner_type=owner.type, owner_id=owner.id, subscription_id=row.id if row else None,
        kind=TransactionKind.PAYMENT, status=TransactionStatus.FAILED, amount_cents=amount,
        currency=currency, plan_code=plan_code, stripe_invoice_id=invoice_id,
        stripe_charge_id=shapes.invoice_charge_id(invoice),
        stripe_payment_intent_id=shapes.invoice_payment_intent_id(invoice), reason=category,
        failure_code=failure.most_specific, attempt_count=attempt, idempotency_key=key)
    if attempt_id is None:
        return Handled(owner=owner, refs=refs, note=f"attempt {attempt} already recorded")
    final = attempt >= ctx.settings.alert_payment_failure_attempts
    recorder.record(
        ctx.session, AuditEvent.PAYMENT_FAILED, actor=STRIPE, owner=owner, outcome=Outcome.FAILURE,
        resource=Resource("transaction", attempt_id), stripe=refs, idempotency_key=key,
        reason=failure.message or failure.most_specific or "payment failed",
        data={"amount_cents": amount, "currency": currency, "attempt_count": attempt,
              "final_attempt": final, "failure_code": failure.code,
              "decline_code": failure.decline_code, "failure_reason": category,
              "failure_message": failure.message,
              "reason_in_event": failure.most_specific is not None,
              "invoice_id": invoice_id, "transaction_id": str(attempt_id), "plan": plan_code,
              "next_payment_attempt": _iso_ts(invoice.get("next_payment_attempt"))})
    owner_type = owner.type.value
    metrics = runtime_of(ctx.session).metrics
    after_commit(ctx.session, lambda: metrics.payment_failed(owner_type, category, final=final))
    return Handled(owner=owner, refs=refs, data={"transaction_id": str(attempt_id),
                                                 "attempt_count": attempt})


def _failure_category(failure: shapes.PaymentFailure) -> str:
    """The metric's closed reason: the issuer's decline code if it names one, else Stripe's code."""
    category = labels.payment_failure_reason(failure.decline_code)
    return category if category != "other" else labels.payment_failure_reason(failure.code)


def _attempts(invoice: dict[str, Any]) -> int:
    value = invoice.get("attempt_count")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _iso_ts(value: Any) -> str | None:
    moment = shapes.timestamp(value)
    return moment.isoformat() if moment else None
