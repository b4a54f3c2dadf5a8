"""The closed sets every metric label value comes from.

A label value that is an id, an e-mail or free text makes a new time series per customer, which
is both a privacy leak and a way to run Prometheus out of memory. Every value therefore passes
through one of the normalisers below, which map anything outside its set onto ``other``. A set
that belongs to a domain enumeration is derived from it, so a new member is a new label value
without a second edit here.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from billwatch.accounts.models import OwnerType
from billwatch.billing.models import RefundReason
from billwatch.webhooks.signature import RejectReason

OTHER = "other"

OWNER_TYPES: tuple[str, ...] = tuple(member.value for member in OwnerType)

REFUND_REASON_CATEGORIES: tuple[str, ...] = tuple(member.value for member in RefundReason)

PAYMENT_FAILURE_REASONS: tuple[str, ...] = (
    "card_declined", "insufficient_funds", "expired_card", "incorrect_cvc", "processing_error",
    "authentication_required", OTHER)

CANCELLED_BY: tuple[str, ...] = ("owner", "admin", "proxy", "stripe")
ASSIGNED_BY_TYPES: tuple[str, ...] = ("patient", "admin")
PROXY_ACTION_TYPES: tuple[str, ...] = ("checkout", "cancel", "view")
AUDIT_OUTCOMES: tuple[str, ...] = ("success", "failure")

@cache
def webhook_event_types() -> tuple[str, ...]:
    """The Stripe event types billwatch handles (its handler table) and ``other`` for the rest,
    read on first use: the handlers count with this module's metrics."""
    from billwatch.webhooks.handlers import HANDLERS

    return (*sorted(HANDLERS), OTHER)

WEBHOOK_REJECT_REASONS: tuple[str, ...] = tuple(member.value for member in RejectReason)


@cache
def alert_kinds() -> tuple[str, ...]:
    """The values of :class:`billwatch.alerts.models.AlertKind`, read on first use: the alerts
    package counts with these metrics, so it cannot be imported while this module loads."""
    from billwatch.alerts.models import AlertKind

    return tuple(member.value for member in AlertKind)


HTTP_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
UNMATCHED_ROUTE = "unmatched"

def closed(value: object, allowed: Iterable[str]) -> str:
    """``value`` when it belongs to ``allowed``, otherwise ``other``."""
    text = getattr(value, "value", value)
    return text if isinstance(text, str) and text in allowed else OTHER


def owner_type(value: object) -> str:
    return closed(value, OWNER_TYPES)


def reason_category(value: object) -> str:
    return closed(value, REFUND_REASON_CATEGORIES)


def payment_failure_reason(code: str | None) -> str:
    """Map a Stripe decline or failure code onto the closed label set."""
    return closed(code, PAYMENT_FAILURE_REASONS)


def webhook_event_type(value: str | None) -> str:
    return closed(value, webhook_event_types())


def alert_kind(value: object) -> str:
    return closed(value, alert_kinds())


def http_method(value: str) -> str:
    upper = value.upper()
    return upper if upper in HTTP_METHODS else OTHER


def http_status(value: int) -> str:
    return str(value) if 100 <= value <= 599 else OTHER
