"""A large, plausible billing history: subscriptions over two years, payments and refunds over one.

Shapes that matter to the daily job are realistic: most subscriptions active, some past due,
about one in ten cancelled at some point, a few trials, incomplete checkouts and free grants;
payments spread evenly over the last 365 days (so one day holds ~1/365 of them), about 5 %
failed, about 2 % of transactions refunds. Seeded, so every run loads the same data.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billwatch.config import Plan

SUBSCRIPTION_COLUMNS = (
    "id", "created_at", "updated_at", "owner_type", "owner_id", "plan_code", "status", "source",
    "stripe_subscription_id", "stripe_customer_id", "current_period_start", "current_period_end",
    "cancel_at_period_end", "canceled_at", "ended_at")
TRANSACTION_COLUMNS = (
    "id", "created_at", "owner_type", "owner_id", "subscription_id", "kind", "status",
    "amount_cents", "currency", "refunded_cents", "plan_code", "stripe_invoice_id", "reason",
    "failure_code", "attempt_count")
STATUSES = (("active", 0.78), ("past_due", 0.05), ("canceled", 0.10), ("trialing", 0.03),
            ("incomplete", 0.02), ("unpaid", 0.02))


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _row_id(n: int, rng: random.Random) -> uuid.UUID:
    """A primary key that grows with ``n`` (random below), so COPY appends to the key's index.

    Random keys would make the load itself the benchmark (millions of random B-tree inserts);
    no figure measured here reads rows by primary key.
    """
    return uuid.UUID(int=(n << 64) | rng.getrandbits(64), version=4)


@dataclass
class BillingData:
    """Generates the rows and remembers what transactions need to point at."""

    plans: list[Plan]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    seed: int = 42
    _subs: list[tuple[uuid.UUID, str, uuid.UUID, str, int]] = field(default_factory=list)

    def subscriptions(self, count: int) -> Iterator[tuple[Any, ...]]:
        rng = random.Random(self.seed)
        patient_plans = [p for p in self.plans if not p.code.startswith("clinic")] or self.plans
        clinic_plans = [p for p in self.plans if p.code.startswith("clinic")] or self.plans
        statuses, weights = zip(*STATUSES, strict=True)
        for n in range(count):
            owner_type = "organization" if rng.random() < 0.08 else "patient"
            plan = rng.choice(clinic_plans if owner_type == "organization" else patient_plans)
            created = self.now - timedelta(seconds=rng.uniform(0, 730 * 86400))
            free = rng.random() < 0.03
            status = "active" if free else rng.choices(statuses, weights)[0]
            cancelled = created + (self.now - created) * rng.random() if status == "canceled" else None
            sub_id, owner_id = _row_id(n, rng), _uuid(rng)
            self._subs.append((sub_id, owner_type, owner_id, plan.code, plan.amount_cents))
            yield (sub_id, created, cancelled or created, owner_type, owner_id, plan.code, status,
                   "free_grant" if free else "stripe", None if free else f"sub_b{n:x}",
                   None if free else f"cus_b{n:x}", created, created + timedelta(days=30), False,
                   cancelled, cancelled)

    def transactions(self, count: int) -> Iterator[tuple[Any, ...]]:
        """Payments and refunds of the subscriptions generated before (call that first)."""
        rng = random.Random(self.seed + 1)
        subs = self._subs
        for n in range(count):
            sub_id, owner_type, owner_id, plan_code, amount = subs[rng.randrange(len(subs))]
            created = self.now - timedelta(seconds=rng.uniform(0, 365 * 86400))
            roll = rng.random()
            if roll < 0.02:
                yield (_row_id(n, rng), created, owner_type, owner_id, sub_id, "refund", "succeeded",
                       amount // 2, "usd", 0, plan_code, None, "requested_by_customer", None, None)
            else:
                failed = roll > 0.95
                yield (_row_id(n, rng), created, owner_type, owner_id, sub_id, "payment",
                       "failed" if failed else "succeeded", amount, "usd", 0, plan_code,
                       f"in_b{n:x}", "card_declined" if failed else None,
                       "card_declined" if failed else None, rng.randint(1, 3) if failed else 1)
