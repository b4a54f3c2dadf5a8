"""Stripe's part of the simulated month: what happens on Stripe's side and the webhooks it sends.

Money really moves at the Stripe peer (cards attached, invoices charged or declined, refunds);
for each such fact this module delivers the webhook Stripe would send, signed, in the current
API shape, built from the peer's own objects. The peer's own (older-shape) deliveries of
``customer.subscription.created`` and ``.deleted`` reach billwatch directly, as registered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from billwatch.billing.models import CheckoutSession
from billwatch.config import BillingInterval, Plan
from billwatch.db import Database
from billwatch.demo import events
from billwatch.demo.api import BillwatchApi, Owner, Person
from billwatch.demo.peer import DECLINING_CARD, GOOD_CARD, StripePeer
from billwatch.webhooks.models import EventStatus, StripeEvent

PEER_EVENT_TYPES = ["customer.subscription.created", "customer.subscription.deleted"]
"""What the peer delivers itself; invoice and checkout events come from :class:`StripeSide`."""
DAY = 24 * 3600
RETRY_DAYS = (3, 5, 7)
"""Stripe's smart-retry spacing after a failed renewal, roughly."""


@dataclass
class LiveSubscription:
    """A subscription the month follows, from checkout to its end."""

    owner: Owner
    plan: Plan
    payer: Person
    """Who checked out: the patient, their proxy, or the clinic's billing admin."""
    by_proxy: bool
    stripe_id: str
    customer: str
    peer: dict[str, Any]
    clock: int
    """Stripe ``created`` of the newest event about it, so later events are never older."""
    ended: bool = False
    ends_at_period_end: bool = False

    def tick(self) -> int:
        self.clock = max(int(time.time()), self.clock + 1)
        return self.clock


WAITING = (EventStatus.RECEIVED, EventStatus.PROCESSING)


@dataclass
class StripeSide:
    peer: StripePeer
    api: BillwatchApi
    db: Database
    secret: str
    base_url: str
    delivered: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    peer_events_expected: Counter[str] = field(default_factory=Counter)

    async def send(self, event_type: str, obj: dict[str, Any], sub: LiveSubscription | None = None,
                   previous: dict[str, Any] | None = None) -> None:
        """Sign and deliver one event; a 5xx is retried as Stripe would (here: at once, 3 times)."""
        created = sub.tick() if sub else int(time.time())
        signed = events.event(event_type, obj, secret=self.secret, created=created,
                              previous_attributes=previous)
        for _ in range(3):
            status = await self.api.post_event(signed.body, signed.signature)
            if status < 500:
                break
            await asyncio.sleep(0.2)
        (self.delivered if status < 300 else self.refused)[event_type] += 1
        if status < 300:
            await self._processed(signed.id)

    async def _processed(self, event_id: str, *, within: float = 30.0) -> None:
        """Wait until billwatch's processors have handled an acknowledged event (the inbox
        answers before it handles), so the month's next step sees its effect as Stripe would."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            async with self.db.sessionmaker() as session:
                status = await session.scalar(select(StripeEvent.status).where(
                    StripeEvent.stripe_event_id == event_id))
            if status is not None and status not in WAITING:  # handled (or failed and retrying)
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"event {event_id} still unprocessed after {within:.0f}s")

    async def _customer_of(self, session_id: str) -> str:
        """The customer a Checkout Session was opened for, as Stripe remembers it."""
        async with self.db.sessionmaker() as session:
            found = await session.scalar(select(CheckoutSession.stripe_customer_id).where(
                CheckoutSession.stripe_session_id == session_id))
        if found is None:
            raise LookupError(f"checkout session {session_id} unknown")
        return found

    async def complete_checkout(self, checkout: dict[str, Any], plan: Plan, owner: Owner,
                                payer: Person) -> LiveSubscription:
        """The customer pays on the hosted page: card, subscription, first invoice, webhooks."""
        customer = await self._customer_of(checkout["stripe_session_id"])
        metadata = {"billwatch_checkout_id": checkout["id"], "billwatch_owner_type": owner.type.value,
                    "billwatch_owner_id": str(owner.id), "billwatch_plan": plan.code}
        if checkout.get("manager_assignment_id"):
            metadata |= {"billwatch_proxy_id": str(payer.id),
                         "billwatch_assignment_id": checkout["manager_assignment_id"]}
        await self.peer.add_card(customer, GOOD_CARD)
        peer_sub = await self.peer.subscribe(customer, plan.stripe_price, metadata)
        self.peer_events_expected["customer.subscription.created"] += 1
        sub = LiveSubscription(owner, plan, payer, bool(checkout.get("manager_assignment_id")),
                               peer_sub["id"], customer, peer_sub, clock=peer_sub["created"])
        await self.send("checkout.session.completed", events.checkout_session_completed(
            session_id=checkout["stripe_session_id"], customer=customer, subscription=sub.stripe_id,
            invoice=peer_sub.get("latest_invoice"), plan=plan, metadata=metadata,
            base_url=self.base_url), sub)
        await self._report_paid(sub, peer_sub["latest_invoice"], "subscription_create", attempt=1)
        await self.send("customer.subscription.updated", events.subscription(peer_sub, plan), sub,
                        previous={"status": "incomplete"})
        return sub

    async def _report_paid(self, sub: LiveSubscription, invoice_id: str, reason: str, *,
                           attempt: int) -> dict[str, Any]:
        peer_invoice = await self.peer.invoice(invoice_id)
        pi = await self.peer.payment_intent(_ref(peer_invoice["payment_intent"]))
        await self.send("invoice.payment_succeeded", events.invoice(
            peer_invoice, sub.plan, billing_reason=reason, payment=events.payment_intent(pi),
            attempt_count=attempt), sub)
        return peer_invoice

    async def renew(self, sub: LiveSubscription) -> None:
        """The period rolls over and the renewal invoice is charged successfully."""
        draft = await self.peer.next_invoice(sub.customer, sub.stripe_id)
        await self.peer.pay(draft["id"])
        await self._report_paid(sub, draft["id"], "subscription_cycle", attempt=1)
        await self._advance_period(sub)

    async def _advance_period(self, sub: LiveSubscription) -> None:
        length = 365 * DAY if sub.plan.interval is BillingInterval.YEAR else 30 * DAY
        start = sub.peer["current_period_end"]
        sub.peer = {**sub.peer, "current_period_start": start, "current_period_end": start + length,
                    "status": "active"}
        await self.send("customer.subscription.updated", events.subscription(sub.peer, sub.plan), sub,
                        previous={"current_period_start": start - length})

    async def dunning(self, sub: LiveSubscription, *, recovers_on: int | None,
                      decline_code: str) -> int:
        """A renewal whose card now declines: up to three attempts, then Stripe gives up.

        Returns the attempt that succeeded, or 0 when all three failed (the subscription ends).
        """
        await self.peer.add_card(sub.customer, DECLINING_CARD)
        draft = await self.peer.next_invoice(sub.customer, sub.stripe_id)
        for attempt in (1, 2, 3):
            if attempt == recovers_on:
                await self.peer.add_card(sub.customer, GOOD_CARD)  # the owner updated the card
                await self.peer.pay(draft["id"])
                await self._report_paid(sub, draft["id"], "subscription_cycle", attempt=attempt)
                await self._advance_period(sub)
                return attempt
            await self._report_failed(sub, draft["id"], attempt, decline_code)
        await self.end(sub)
        return 0

    async def _report_failed(self, sub: LiveSubscription, invoice_id: str, attempt: int,
                             decline_code: str) -> None:
        peer_invoice = await self.peer.pay(invoice_id)
        pi = await self.peer.payment_intent(_ref(peer_invoice["payment_intent"]))
        final = attempt == len(RETRY_DAYS)
        retry_at = None if final else peer_invoice["period_start"] + RETRY_DAYS[attempt - 1] * DAY
        await self.send("invoice.payment_failed", events.invoice(
            peer_invoice, sub.plan, billing_reason="subscription_cycle",
            payment=events.payment_intent(pi, decline_code=decline_code), attempt_count=attempt,
            next_payment_attempt=retry_at), sub)
        if attempt == 1:
            sub.peer = {**sub.peer, "status": "past_due"}
            await self.send("customer.subscription.updated", events.subscription(sub.peer, sub.plan),
                            sub, previous={"status": "active"})

    async def report_cancel_at_period_end(self, sub: LiveSubscription) -> None:
        """billwatch asked Stripe to cancel at period end; Stripe confirms with an update event."""
        sub.peer = await self.peer.subscription(sub.stripe_id)
        sub.ends_at_period_end = True
        await self.send("customer.subscription.updated", events.subscription(sub.peer, sub.plan), sub,
                        previous={"cancel_at_period_end": False})

    async def end(self, sub: LiveSubscription) -> None:
        """The subscription ends at the peer, which then sends ``customer.subscription.deleted``."""
        if not sub.ended:
            await self.peer.end_subscription(sub.stripe_id)
            self.note_ended_by_billwatch(sub)

    def note_ended_by_billwatch(self, sub: LiveSubscription) -> None:
        sub.ended = True
        self.peer_events_expected["customer.subscription.deleted"] += 1

    async def report_refund(self, invoice_id: str) -> None:
        """Stripe's ``charge.refunded`` after a refund billwatch issued through its gateway."""
        peer_invoice = await self.peer.invoice(invoice_id)
        charge = await self.peer.charge(_ref(peer_invoice["charge"]))
        await self.send("charge.refunded", events.charge_refunded(charge))

    async def forged_delivery(self) -> int:
        """A delivery signed with the wrong secret, as an attacker would send it."""
        signed = events.event("invoice.payment_succeeded", {"id": "in_forged", "object": "invoice"},
                              secret="whsec_not_the_endpoint_secret")
        return await self.api.post_event(signed.body, signed.signature)


def _ref(value: Any) -> str:
    return str(value["id"] if isinstance(value, dict) else value)
