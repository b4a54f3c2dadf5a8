"""The event types billwatch acts on, and the handler for each; every other type is ignored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from billwatch.webhooks.handlers.checkout import checkout_completed, checkout_expired
from billwatch.webhooks.handlers.common import EventContext, Handled
from billwatch.webhooks.handlers.invoices import invoice_paid, invoice_payment_failed
from billwatch.webhooks.handlers.refunds import charge_refunded, refund_event
from billwatch.webhooks.handlers.subscriptions import subscription_event

Handler = Callable[[EventContext], Awaitable[Handled]]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": checkout_completed,
    "checkout.session.expired": checkout_expired,
    "customer.subscription.created": subscription_event,
    "customer.subscription.updated": subscription_event,
    "customer.subscription.deleted": subscription_event,
    "invoice.payment_succeeded": invoice_paid,
    "invoice.paid": invoice_paid,
    "invoice.payment_failed": invoice_payment_failed,
    "charge.refunded": charge_refunded,
    "refund.created": refund_event,
    "refund.updated": refund_event,
}

__all__ = ["HANDLERS", "EventContext", "Handled", "Handler"]
