"""Owners with a Stripe customer and a live subscription, for requests that need real targets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import insert

from billwatch.accounts.models import OwnerType, Role, User
from billwatch.billing.models import (
    StripeCustomer,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
)
from billwatch.config import Plan
from billwatch.db import Database, utcnow


@dataclass(frozen=True, slots=True)
class Seeded:
    admin_id: uuid.UUID
    patient_ids: list[uuid.UUID]
    subscriptions: list[tuple[str, str]]
    """``(stripe_subscription_id, stripe_customer_id)`` of each patient's live subscription."""


async def seed_subscribers(url: str, count: int, plan: Plan, *,
                           subscribed: bool = True) -> Seeded:
    """One admin and ``count`` patients, each with a Stripe customer and an active subscription
    (or, ``subscribed=False``, with neither: owners a free grant can be given to)."""
    db = Database(url)
    now = utcnow()
    admin_id = uuid.uuid4()
    patients = [uuid.uuid4() for _ in range(count)]
    try:
        async with db.unit_of_work() as session:
            await session.execute(insert(User), [
                {"id": admin_id, "email": "admin@bench.test", "name": "Bench Admin", "role": Role.ADMIN},
                *({"id": pid, "email": f"p{n}@bench.test", "name": f"Patient {n}", "role": Role.PATIENT}
                  for n, pid in enumerate(patients))])
            if not subscribed:
                return Seeded(admin_id, patients, [])
            await session.execute(insert(StripeCustomer), [
                {"id": uuid.uuid4(), "owner_type": OwnerType.PATIENT, "owner_id": pid,
                 "stripe_customer_id": f"cus_bench{n}", "idempotency_key": f"bench:{n}"}
                for n, pid in enumerate(patients)])
            await session.execute(insert(Subscription), [
                {"id": uuid.uuid4(), "owner_type": OwnerType.PATIENT, "owner_id": pid,
                 "plan_code": plan.code, "status": SubscriptionStatus.ACTIVE,
                 "source": SubscriptionSource.STRIPE, "stripe_subscription_id": f"sub_bench{n}",
                 "stripe_customer_id": f"cus_bench{n}", "current_period_start": now,
                 "current_period_end": now, "cancel_at_period_end": False, "created_at": now,
                 "updated_at": now}
                for n, pid in enumerate(patients)])
    finally:
        await db.dispose()
    return Seeded(admin_id, patients, [(f"sub_bench{n}", f"cus_bench{n}") for n in range(count)])
