"""What pages show people rather than machines: money, one sentence per audit row, charts.

The sentence registry follows the audit-action pattern of a human template per event name; an
event without a template still reads as a sentence from its action and outcome. Charts are
plain SVG built here from numbers only, so they need no script and pass a strict CSP.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.models import Organization, OwnerType, User
from billwatch.audit.models import AuditLog


def money(cents: int | None, currency: str | None) -> str:
    """``1500, "usd"`` → ``15.00 USD`` (minor units of two-decimal currencies)."""
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}{whole:,}.{part:02d} {(currency or '').upper()}".strip()


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f} %"


@dataclass(frozen=True, slots=True)
class Names:
    """Display names of the users and organizations a page mentions, loaded in two queries."""

    users: dict[uuid.UUID, User]
    organizations: dict[uuid.UUID, str]

    def user(self, user_id: uuid.UUID | None) -> str:
        found = self.users.get(user_id) if user_id else None
        return found.name if found else (str(user_id)[:8] if user_id else "someone")

    def owner(self, owner_type: OwnerType | None, owner_id: uuid.UUID | None) -> str:
        if owner_id is None:
            return ""
        if owner_type is OwnerType.ORGANIZATION:
            return f"organization {self.organizations.get(owner_id, str(owner_id)[:8])}"
        return f"patient {self.user(owner_id)}"

    def actor(self, row: AuditLog) -> str:
        if row.actor_user_id is not None:
            return self.user(row.actor_user_id)
        return {"stripe": "Stripe"}.get(row.actor_name or "", row.actor_name or "An anonymous caller")


async def names_for(session: AsyncSession, rows: Sequence[AuditLog],
                    extra_users: Sequence[uuid.UUID] = ()) -> Names:
    user_ids = {row.actor_user_id for row in rows if row.actor_user_id} | \
        {row.owner_id for row in rows if row.owner_id and row.owner_type is OwnerType.PATIENT} | \
        set(extra_users)
    org_ids = {row.owner_id for row in rows if row.owner_id and row.owner_type is OwnerType.ORGANIZATION}
    users = {user.id: user for user in (await session.scalars(
        select(User).where(User.id.in_(user_ids)))).all()} if user_ids else {}
    orgs = {org.id: org.name for org in (await session.scalars(
        select(Organization).where(Organization.id.in_(org_ids)))).all()} if org_ids else {}
    return Names(users, orgs)


_TEMPLATES: dict[str, str] = {
    "billing.refund.issued": "{actor} refunded {amount} of payment {resource} for {owner}{reason}",
    "billing.refund.recorded": "Stripe recorded a refund of {amount} for {owner}",
    "billing.checkout.created": "{actor} started a checkout of {plan} for {owner}",
    "billing.proxy.checkout.created": "{actor}, billing manager, started a checkout of {plan} for {owner}",
    "billing.checkout.completed": "{owner} completed a checkout of {plan}",
    "billing.subscription.cancelled": "{actor} cancelled a subscription of {owner}",
    "billing.proxy.subscription.cancelled": "{actor}, billing manager, cancelled a subscription of {owner}",
    "billing.subscription.created": "Stripe created a subscription to {plan} for {owner}",
    "billing.subscription.updated": "Stripe updated a subscription of {owner}",
    "billing.payment.succeeded": "{owner} paid {amount}",
    "billing.payment.failed": "A payment of {amount} by {owner} failed{attempt}",
    "billing.free_subscription.granted": "{actor} granted {owner} a free {plan}",
    "billing.override.created": "{actor} created a billing override for {owner}",
    "billing.override.revoked": "{actor} revoked a billing override of {owner}",
    "billing.manager.assigned": "{actor} named a billing manager for {owner}",
    "billing.manager.removed": "{actor} removed a billing manager of {owner}",
    "billing.account.viewed": "{actor} read the billing of {owner}",
    "billing.proxy.account.viewed": "{actor}, billing manager, read the billing of {owner}",
    "billing.portal.accessed": "{actor} opened the billing portal of {owner}",
    "billing.webhook.received": "Stripe delivered {type}",
    "billing.webhook.failed": "A Stripe event could not be processed",
    "audit.read": "{actor} read the audit trail",
    "audit.access_denied": "{actor} was refused the audit trail",
    "alerts.read": "{actor} read the alert ledger",
    "alerts.acknowledged": "{actor} acknowledged an alert",
    "console.sign_in.requested": "A console sign-in link was asked for {email}",
    "console.signed_in": "{actor} signed in to the console",
    "console.signed_out": "{actor} signed out of the console",
    "console.viewed": "{actor} viewed the console's {page} page",
    "billing.webhook.replay_requested": "{actor} replayed Stripe event {event}",
}


def sentence(row: AuditLog, data: dict[str, Any] | None, names: Names) -> str:
    """One sentence saying who did what to whose money, and whether it worked."""
    data = data or {}
    template = _TEMPLATES.get(row.event_type, "{actor} {action} {resource_type} for {owner}")
    reason = data.get("reason")
    attempt = data.get("attempt_count")
    text = template.format(
        actor=names.actor(row), owner=names.owner(row.owner_type, row.owner_id) or "no owner",
        amount=money(data.get("amount_cents"), data.get("currency")),
        resource=(row.resource_id or "")[:8], resource_type=row.resource_type or "",
        action=row.action, plan=data.get("plan_code") or data.get("plan") or "a plan",
        reason=f": {reason}" if reason else "", type=data.get("type", "an event"),
        attempt=f" (attempt {attempt})" if attempt else "", email=data.get("email", "an address"),
        page=data.get("page", "a"), event=data.get("stripe_event_id") or row.stripe_event_id or "")
    text = " ".join(text.split())
    if row.outcome.value == "failure":
        text += f" — refused or failed: {row.reason or 'no reason recorded'}"
    return text + "."


def line_chart(points: Sequence[tuple[date, float | None]], *, label: str,
               width: int = 320, height: int = 80) -> Markup:
    """An SVG line of one series over days, with its label as the accessible name."""
    values = [value for _, value in points if value is not None]
    title = escape(label)
    if len(values) < 2:
        return Markup(f'<p class="chart-empty">{title}: not enough days yet.</p>')
    low, high = min(values), max(values)
    spread = (high - low) or 1.0
    step = width / max(len(points) - 1, 1)
    coords = [f"{index * step:.1f},{height - 4 - (value - low) / spread * (height - 8):.1f}"
              for index, (_, value) in enumerate(points) if value is not None]
    first, last = points[0][0], points[-1][0]
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{title}, {first} to {last}"><title>{title}</title>'
        f'<polyline fill="none" stroke="#1d4ed8" stroke-width="2" points="{" ".join(coords)}"/>'
        f'</svg>')
