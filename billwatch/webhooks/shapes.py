"""Reading Stripe objects in both shapes billwatch meets.

Stripe's current API moved several fields: an invoice names its subscription under
``parent.subscription_details`` and its payments under ``payments`` (no top-level ``charge``,
``payment_intent`` or ``subscription``); a subscription's period lives on each item; items carry a
``price``. Older API versions (and localstripe, our Stripe peer in tests) send ``subscription``,
``charge``, ``current_period_end`` on the subscription and ``plan`` on items. Every accessor here
accepts both, so handlers never look at a field directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billwatch.errors import Unprocessable


class MissingField(Unprocessable):
    """The payload lacks a field the handler cannot do without (the event fails and is retried)."""

    def __init__(self, obj: dict[str, Any], field: str) -> None:
        kind = obj.get("object") or "object"
        super().__init__(f"{kind} {obj.get('id') or '?'} has no {field}", code="missing_field")


def ref(value: Any) -> str | None:
    """An id whether the field holds the id or the expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def required_str(obj: dict[str, Any], field: str) -> str:
    value = ref(obj.get(field))
    if value is None:
        raise MissingField(obj, field)
    return value


def required_int(obj: dict[str, Any], field: str) -> int:
    value = obj.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MissingField(obj, field)
    return value


def timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    return None


def metadata(obj: dict[str, Any]) -> dict[str, str]:
    found = obj.get("metadata")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def list_data(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        value = value.get("data")
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


# --- subscriptions ----------------------------------------------------------------------------

def subscription_items(sub: dict[str, Any]) -> list[dict[str, Any]]:
    return list_data(sub.get("items"))


def subscription_price_id(sub: dict[str, Any]) -> str | None:
    """The price (current shape) or plan (older shape) id of the subscription's first item."""
    for item in subscription_items(sub):
        found = ref(item.get("price")) or ref(item.get("plan"))
        if found:
            return found
    return ref(sub.get("plan"))


def subscription_period(sub: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The current period: on the subscription (older) or on its items (current shape)."""
    start, end = timestamp(sub.get("current_period_start")), timestamp(sub.get("current_period_end"))
    if start is not None or end is not None:
        return start, end
    for item in subscription_items(sub):
        start = timestamp(item.get("current_period_start"))
        end = timestamp(item.get("current_period_end"))
        if start is not None or end is not None:
            return start, end
    return None, None


# --- invoices -----------------------------------------------------------------------------

def invoice_subscription_id(invoice: dict[str, Any]) -> str | None:
    found = ref(invoice.get("subscription"))
    if found:
        return found
    parent = invoice.get("parent")
    if isinstance(parent, dict) and isinstance(parent.get("subscription_details"), dict):
        found = ref(parent["subscription_details"].get("subscription"))
        if found:
            return found
    for line in list_data(invoice.get("lines")):
        found = ref(line.get("subscription"))
        parent = line.get("parent")
        details = parent.get("subscription_item_details") if isinstance(parent, dict) else None
        if not found and isinstance(details, dict):
            found = ref(details.get("subscription"))
        if found:
            return found
    return None


def invoice_price_id(invoice: dict[str, Any]) -> str | None:
    for line in list_data(invoice.get("lines")):
        found = ref(line.get("price")) or ref(line.get("plan"))
        pricing = line.get("pricing")
        if not found and isinstance(pricing, dict) and isinstance(pricing.get("price_details"), dict):
            found = ref(pricing["price_details"].get("price"))
        if found:
            return found
    return None


def _invoice_payments(invoice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``payment`` objects of the current shape's ``invoice.payments`` (when present)."""
    for entry in list_data(invoice.get("payments")):
        payment = entry.get("payment")
        if isinstance(payment, dict):
            yield payment


def invoice_charge_id(invoice: dict[str, Any]) -> str | None:
    found = ref(invoice.get("charge"))
    if found:
        return found
    for payment in _invoice_payments(invoice):
        found = ref(payment.get("charge"))
        if found:
            return found
    return None


def invoice_payment_intent_id(invoice: dict[str, Any]) -> str | None:
    found = ref(invoice.get("payment_intent"))
    if found:
        return found
    charge = invoice.get("charge")
    if isinstance(charge, dict) and ref(charge.get("payment_intent")):
        return ref(charge.get("payment_intent"))
    for payment in _invoice_payments(invoice):
        found = ref(payment.get("payment_intent"))
        if found:
            return found
    return None


@dataclass(frozen=True, slots=True)
class PaymentFailure:
    code: str | None = None
    """Stripe's error code (``card_declined``, ``expired_card``...)."""
    decline_code: str | None = None
    """The issuer's reason when the card was declined (``insufficient_funds``...)."""
    message: str | None = None

    @property
    def most_specific(self) -> str | None:
        return self.decline_code or self.code


def invoice_failure(invoice: dict[str, Any]) -> PaymentFailure:
    """Why the payment failed, from whatever expanded charge or payment intent the event holds.

    Stripe expands neither in webhooks of the current API; then every field is None and the
    audit row says so.
    """
    candidates: list[Any] = [invoice.get("charge"), invoice.get("payment_intent"),
                             {"last_payment_error": invoice.get("last_payment_error")}]
    for payment in _invoice_payments(invoice):
        candidates += [payment.get("charge"), payment.get("payment_intent")]
    for candidate in candidates:
        if isinstance(candidate, dict):
            failure = _failure_of(candidate)
            if failure != PaymentFailure():
                return failure
    return PaymentFailure()


def _failure_of(obj: dict[str, Any]) -> PaymentFailure:
    error = obj.get("last_payment_error")
    if isinstance(error, dict):  # a payment intent
        return PaymentFailure(_text(error.get("code")), _text(error.get("decline_code")),
                              _text(error.get("message")))
    outcome = obj.get("outcome")
    outcome = outcome if isinstance(outcome, dict) else {}
    return PaymentFailure(_text(obj.get("failure_code")), _text(outcome.get("reason")),
                          _text(obj.get("failure_message")))


def _text(value: Any) -> str | None:
    return str(value)[:200] if isinstance(value, str) and value else None
