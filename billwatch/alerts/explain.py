"""What an alert mail tells a person: what happened, to whom, and what happens next.

One function per alert kind turns the stored payload into sentences; each kind's runbook is a
page under docs/operations/alerts/, so a mail links to what the operator should do.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.models import Organization, OwnerType, User
from billwatch.alerts.models import AlertKind

RUNBOOKS: dict[str, str] = {
    AlertKind.PAYMENT_FINAL_FAILURE: "payment-final-failure",
    AlertKind.WEBHOOK_FAILURE: "webhook-failure",
    AlertKind.AUDIT_WRITE_FAILURE: "audit-write-failure",
    AlertKind.CHURN_HIGH: "churn-high",
    AlertKind.REFUNDS_HIGH: "refunds-high",
    AlertKind.PAYMENT_FAILURE_RATE: "payment-failure-rate",
    AlertKind.DAILY_REPORT: "daily-report",
    AlertKind.DUPLICATE_SUBSCRIPTION: "duplicate-subscription",
}
"""Each alert kind's runbook page, ``docs/operations/alerts/<name>.md``."""


def runbook_path(kind: str) -> str | None:
    """The runbook of ``kind`` relative to docs/ (and to ``BILLWATCH_DOCS_BASE_URL``)."""
    name = RUNBOOKS.get(kind)
    return f"operations/alerts/{name}.md" if name else None


@dataclass(frozen=True, slots=True)
class Owner:
    """Who an alert concerns, as far as a mail may say."""

    kind: str
    id: str
    name: str
    email: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    happened: str
    next_step: str


def format_money(cents: Any, currency: Any) -> str:
    """Minor units as money in their currency: 1500, "usd" -> "15.00 USD" (integer arithmetic)."""
    if not isinstance(cents, int) or isinstance(cents, bool):
        return "an unknown amount"
    whole, rest = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{whole:,}.{rest:02d} {str(currency or 'usd').upper()}"


def mask_email(email: str, mode: str) -> str | None:
    """``full``, ``masked`` (``j***@example.com``) or ``hidden`` (None), as the setting says."""
    if mode == "hidden" or not email:
        return None
    if mode == "full":
        return email
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


async def load_owner(session: AsyncSession, payload: dict[str, Any],
                     email_mode: str) -> Owner | None:
    """The owner named by ``owner_type``/``owner_id`` in the payload, if it still exists."""
    kind, raw_id = payload.get("owner_type"), payload.get("owner_id")
    try:
        owner_id = uuid.UUID(str(raw_id))
    except ValueError:
        return None
    if kind == OwnerType.PATIENT.value:
        user = await session.get(User, owner_id)
        return None if user is None else Owner("patient", str(owner_id), user.name,
                                               mask_email(user.email, email_mode))
    if kind == OwnerType.ORGANIZATION.value:
        org = await session.get(Organization, owner_id)
        return None if org is None else Owner("organization", str(owner_id), org.name, None)
    return None


def _who(owner: Owner | None, payload: dict[str, Any]) -> str:
    if owner is not None:
        return owner.name
    customer = payload.get("stripe_customer_id")
    return f"Stripe customer {customer} (no billwatch owner found)" if customer else "an unknown customer"


def _final_failure(payload: dict[str, Any], owner: Owner | None) -> Explanation:
    amount = format_money(payload.get("amount_cents"), payload.get("currency"))
    plan = f" {payload['plan']}" if payload.get("plan") else ""
    why = payload.get("failure_message") or payload.get("decline_code") or payload.get("failure_code")
    happened = (f"The payment of {amount} for {_who(owner, payload)}'s{plan} subscription failed "
                f"on attempt {payload.get('attempt_count', '?')}"
                + (f" ({why})." if why else "."))
    next_attempt = payload.get("next_payment_attempt")
    if next_attempt:
        step = (f"Stripe retries the payment at {next_attempt}. If the last retry fails too, "
                "Stripe cancels the subscription or marks it unpaid, as the Stripe account's "
                "retry settings say. Ask the customer to update their card in the billing portal.")
    else:
        step = ("Stripe makes no further automatic attempt: the subscription will be cancelled "
                "or marked unpaid, as the Stripe account's subscription settings say, and "
                "billwatch records that when Stripe reports it. Contact the customer to update "
                "their card and pay the open invoice.")
    return Explanation(happened, step)


def _webhook_failure(payload: dict[str, Any], _owner: Owner | None) -> Explanation:
    if payload.get("stage") == "verification":
        return Explanation(
            "Webhook deliveries from Stripe were refused before processing "
            f"({payload.get('reason') or 'verification failed'}).",
            "Nothing was stored for them. If these are Stripe's own deliveries, check the "
            "webhook signing secret; Stripe keeps re-sending them for up to three days.")
    return Explanation(
        f"The Stripe event {payload.get('event_type') or '?'} could not be processed "
        f"({payload.get('error_type') or 'error'}).",
        "The event stays in billwatch's inbox and is retried; Stripe re-sends unanswered events "
        "for up to three days. Once the cause is fixed, `billwatch webhooks replay` processes "
        "what is left.")


def _audit_write_failure(payload: dict[str, Any], _owner: Owner | None) -> Explanation:
    events = ", ".join(payload.get("event_types") or ["?"])
    return Explanation(
        f"An audit row for {events} could not be written ({payload.get('error_type') or 'error'}); "
        "the operation it recorded was refused and rolled back.",
        "Nothing changed without its record, and nothing will until the database accepts audit "
        "rows again: check its disk, connections and permissions. Clients may retry afterwards.")


def _churn_high(payload: dict[str, Any], _owner: Owner | None) -> Explanation:
    return Explanation(
        f"{payload.get('customers_lost', '?')} of {payload.get('customers_at_start', '?')} paying "
        f"customers were lost in the 30 days to {payload.get('day', '?')}.",
        "Nothing happens automatically. Look at the cancellations and unpaid subscriptions of "
        "the period; the alert for this day does not repeat.")


def _refunds_high(payload: dict[str, Any], _owner: Owner | None) -> Explanation:
    return Explanation(
        f"More refunds than the daily threshold were issued on {payload.get('day', 'the day')}.",
        "Nothing happens automatically. Check the audit trail (billing.refund.*) for who issued "
        "them and why.")


def _failure_rate(_payload: dict[str, Any], _owner: Owner | None) -> Explanation:
    return Explanation(
        "The share of failed payments in one hour is far above its 7-day baseline.",
        "Stripe keeps retrying each invoice on its schedule. Check Stripe's status page and "
        "the decline codes of the hour: many alike point at a processor or configuration fault.")


def _daily_report(_payload: dict[str, Any], _owner: Owner | None) -> Explanation:
    return Explanation("The day's billing figures.", "Nothing to do.")


EXPLAINERS: dict[str, Callable[[dict[str, Any], Owner | None], Explanation]] = {
    AlertKind.PAYMENT_FINAL_FAILURE: _final_failure,
    AlertKind.WEBHOOK_FAILURE: _webhook_failure,
    AlertKind.AUDIT_WRITE_FAILURE: _audit_write_failure,
    AlertKind.CHURN_HIGH: _churn_high,
    AlertKind.REFUNDS_HIGH: _refunds_high,
    AlertKind.PAYMENT_FAILURE_RATE: _failure_rate,
    AlertKind.DAILY_REPORT: _daily_report,
}


def explain(kind: str, payload: dict[str, Any], owner: Owner | None) -> Explanation:
    explainer = EXPLAINERS.get(kind)
    if explainer is None:
        return Explanation("An alert was raised.", "See the details below.")
    return explainer(payload, owner)


def link(base: str, path: str) -> str | None:
    """``base`` + ``path``, or None when the base URL is not configured."""
    return f"{base.rstrip('/')}/{path.lstrip('/')}" if base else None
