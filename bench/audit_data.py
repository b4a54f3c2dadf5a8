"""A year of audit rows, written the way the recorder writes them, for COPY.

Each row's metadata is encrypted and its keyed content hash computed by the audit trail's own
:func:`billwatch.audit.chain.seal_fields` (the function the recorder calls), so the verifier and
the admin API meet exactly what production would hold. Rows come in time order (an append-only
log), over 50,000 owners and 5,000 actors, with the event mix of a busy billing service.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billwatch.audit import chain
from billwatch.audit.crypto import AuditKeys

AUDIT_COLUMNS = (*chain.CONTENT_COLUMNS, "content_hash", "metadata_key_id", "metadata_ciphertext")
EVENTS = (  # (event type, outcome, actor kind, weight)
    ("billing.webhook.received", "success", "stripe", 38),
    ("billing.payment.succeeded", "success", "stripe", 20),
    ("billing.subscription.updated", "success", "stripe", 9),
    ("billing.subscription.created", "success", "stripe", 5),
    ("billing.checkout.created", "success", "patient", 6),
    ("billing.proxy.checkout.created", "success", "proxy", 2),
    ("billing.account.viewed", "success", "patient", 6),
    ("billing.proxy.account.viewed", "success", "proxy", 2),
    ("billing.payment.failed", "failure", "stripe", 3),
    ("billing.subscription.cancelled", "success", "patient", 2),
    ("billing.refund.issued", "success", "admin", 1),
    ("billing.override.created", "success", "admin", 1),
    ("billing.free_subscription.granted", "success", "admin", 1),
    ("billing.manager.assigned", "success", "patient", 2),
    ("billing.checkout.created", "failure", "patient", 1),
    ("billing.webhook.failed", "failure", "stripe", 1),
    ("audit.read", "success", "admin", 1),
)
PLANS = ("basic_monthly", "basic_yearly", "plus_monthly", "plus_yearly", "clinic_monthly")


@dataclass
class AuditData:
    keys: AuditKeys
    end: datetime = field(default_factory=lambda: datetime.now(UTC))
    seed: int = 11
    owners: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    actors: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)
    """The first rows as plain dicts (content plus metadata), for the pure-Python baseline."""

    @property
    def start(self) -> datetime:
        """The time of the first row: the rows cover the year up to :attr:`end`."""
        return self.end - timedelta(days=365)

    def rows(self, count: int, *, keep: int = 0) -> Iterator[tuple[Any, ...]]:
        rng = random.Random(self.seed)
        self.owners = [("organization" if n % 12 == 0 else "patient", uuid.UUID(int=rng.getrandbits(128)))
                       for n in range(50_000)]
        self.actors = {kind: [uuid.UUID(int=rng.getrandbits(128)) for _ in range(n)]
                       for kind, n in (("patient", 4000), ("proxy", 800), ("admin", 20))}
        kinds, weights = list(range(len(EVENTS))), [e[3] for e in EVENTS]
        step = (self.end - self.start) / count
        start = self.start
        for n in range(count):
            event, outcome, actor, _ = EVENTS[rng.choices(kinds, weights)[0]]
            fields, data = self._row(rng, start + step * n, event, outcome, actor)
            sealed = chain.seal_fields(fields, data, self.keys)
            if n < keep:
                content = zip(chain.CONTENT_COLUMNS, chain.canonical_fields(fields), strict=True)
                self.sample.append({**dict(content), "metadata": data})
            yield (*(fields[column] for column in chain.CONTENT_COLUMNS), sealed.content_hash,
                   sealed.key_id, sealed.ciphertext)

    def _row(self, rng: random.Random, when: datetime, event: str, outcome: str,
             actor: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """One row's column values (by name) and its metadata."""
        owner_type, owner_id = self.owners[rng.randrange(len(self.owners))]
        by_user = actor != "stripe"
        user = rng.choice(self.actors[actor]) if by_user else None
        customer = f"cus_{owner_id.hex[:14]}"
        invoice = f"in_{rng.getrandbits(64):016x}" if "payment" in event else None
        row = dict(
            id=uuid.UUID(int=rng.getrandbits(128), version=4), occurred_at=when, event_type=event,
            outcome=outcome, action=event.rsplit(".", 1)[-1],
            reason="card_declined: insufficient_funds" if outcome == "failure" else None,
            actor_user_id=user, actor_role=actor if by_user else None,
            actor_name=None if by_user else "stripe",
            manager_assignment_id=uuid.UUID(int=rng.getrandbits(128)) if actor == "proxy" else None,
            resource_type="subscription", resource_id=str(uuid.UUID(int=rng.getrandbits(128))),
            owner_type=owner_type, owner_id=owner_id,
            request_id=f"{rng.getrandbits(128):032x}" if by_user else None,
            client_ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            if by_user else None,
            job_id=None if by_user else f"stripe-webhook:evt_{rng.getrandbits(64):016x}",
            stripe_event_id=None if by_user else f"evt_{rng.getrandbits(64):016x}",
            stripe_customer_id=customer, stripe_subscription_id=f"sub_{owner_id.hex[:14]}",
            stripe_invoice_id=invoice, idempotency_key=None)
        data = {"plan": rng.choice(PLANS), "amount_cents": rng.choice((1500, 3000, 9900)),
                "currency": "usd", "invoice_id": invoice, "attempt_count": 1}
        return row, data


def baseline_chain(rows: list[dict[str, Any]]) -> bytes:
    """The floor: SHA-256 over each row's canonical JSON, chained, in pure Python."""
    import hashlib

    head = hashlib.sha256(b"genesis").digest()
    for row in rows:
        digest = hashlib.sha256(json.dumps(row, sort_keys=True, separators=(",", ":")).encode()).digest()
        head = hashlib.sha256(head + digest).digest()
    return head
