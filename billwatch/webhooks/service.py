"""Replaying stored events and reconciling the store with Stripe's Events API.

Both claim the stored event and run it through
:func:`~billwatch.webhooks.processing.process_claimed`, the path the inbox processors take, so a
replayed or reconciled event is handled, stored and audited exactly like a delivered one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billwatch.config import Settings
from billwatch.db import Database
from billwatch.errors import NotFound
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks import inbox, store
from billwatch.webhooks.models import EventSource
from billwatch.webhooks.processing import (
    Delivery,
    ProcessOutcome,
    ProcessResult,
    metric_label,
)
from billwatch.webhooks.signature import WebhookRejected, checked_event


async def replay(db: Database, gateway: PaymentsGateway, settings: Settings,
                 event_id: str) -> ProcessResult:
    """Run a stored event through its handler again now (a processed event stays as it is).

    One attempt: if it fails the event is ``failed`` again (no automatic retries).
    """
    result = await inbox.process_now(db, gateway, settings, event_id, delivery=Delivery.REPLAY)
    if result is None:
        raise NotFound(f"no stored Stripe event {event_id}", code="event_not_found")
    return result


async def replay_failed(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                        limit: int = 1000) -> list[ProcessResult]:
    """Replay every failed event, oldest Stripe time first."""
    async with db.sessionmaker() as session:
        event_ids = await store.failed_event_ids(session, limit=limit)
    return [await replay(db, gateway, settings, event_id) for event_id in event_ids]


@dataclass
class ReconcileReport:
    since: datetime
    listed: int = 0
    """Events Stripe listed since ``since``."""
    results: list[ProcessResult] = field(default_factory=list)
    """One per event the store lacked, in Stripe time order."""
    unreadable: list[str] = field(default_factory=list)
    missed: int = 0
    """Events this reconciliation stored (no delivery had)."""

    @property
    def failed(self) -> int:
        """Events whose handling failed (retrying ones are retried by the processors)."""
        return sum(1 for r in self.results
                   if r.outcome in (ProcessOutcome.FAILED, ProcessOutcome.RETRYING))


async def reconcile(db: Database, gateway: PaymentsGateway, settings: Settings, *,
                    since: datetime) -> ReconcileReport:
    """Process every event Stripe holds since ``since`` that no delivery brought us."""
    report = ReconcileReport(since=since)
    missed = db.required_runtime().metrics.webhooks_missed
    missing: list[dict[str, Any]] = []
    page: list[dict[str, Any]] = []
    async for event in gateway.iter_events(since=since):
        report.listed += 1
        page.append(event)
        if len(page) >= 100:
            missing += await _unknown(db, page)
            page = []
    missing += await _unknown(db, page)
    # Handlers are order-safe, but applying what was missed oldest first keeps the audit trail
    # in the order things happened.
    missing.sort(key=lambda e: (e.get("created") or 0, str(e.get("id"))))
    for event in missing:
        try:
            checked = checked_event(event)
        except WebhookRejected:
            report.unreadable.append(str(event.get("id")))
            continue
        accepted = await inbox.accept(db, checked, source=EventSource.RECONCILE, wake=False)
        if not accepted.stored:  # a delivery raced us: not missed
            report.results.append(ProcessResult(accepted.event_id, checked["type"],
                                                ProcessOutcome.DUPLICATE, 0, note="delivered"))
            continue
        report.missed += 1
        missed.labels(event_type=metric_label(checked["type"])).inc()
        result = await inbox.process_now(db, gateway, settings, accepted.event_id,
                                         delivery=Delivery.RECONCILE)
        report.results.append(result or ProcessResult(
            accepted.event_id, checked["type"], ProcessOutcome.DUPLICATE, 0, note="not stored"))
    return report


async def _unknown(db: Database, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not events:
        return []
    async with db.sessionmaker() as session:
        known = await store.known_ids(session, (str(e.get("id")) for e in events))
    return [e for e in events if str(e.get("id")) not in known]
