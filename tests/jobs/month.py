"""A crafted month of billing (June 2026) whose figures for 30 June are computed by hand below.

Plans (monthly-normalised): basic_monthly 1500, basic_yearly 15000/12 = 1250, plus_monthly
3000, plus_yearly 30000/12 = 2500, clinic_monthly 9900, clinic_yearly 99000/12 = 8250.
The churn window of 30 June is [1 June 00:00, 1 July 00:00).

owner  subscription(s)                                       paying 1 June  paying 1 July
P1     basic_monthly active                                   1500           1500
P2     plus_yearly active                                     2500           2500
O1     clinic_monthly active (organization)                   9900           9900
P3     basic_monthly canceled, ended 15 June                  1500           0      churned
O2     clinic_yearly canceled, ended 20 June (organization)   8250           0      churned
P4     plus_monthly ended 10 June + basic_monthly from 10 June 3000          1500   downgraded
P5     basic_monthly 5 June .. 25 June                        0              0      in and out
P6     plus_monthly created 30 June                           0              3000   new
P7     basic_yearly past_due                                  1250           1250
P8     plus_monthly trialing                                  0              0      (trial)
P9     clinic_monthly free grant                              0              0      (free)
P10    basic_monthly incomplete, created 30 June              0              0      (never paid)
P11    basic_monthly active, cancel at period end asked 30 June 1500         1500
P12    basic_monthly unpaid since 12 June                     1500           0      churned

MRR at start 30900 over 9 customers; at the end 21150 over 7 customers.
Customer churn = 3 / 9. Revenue churn = (1500 + 8250 + 1500 + 1500 lost by P4) / 30900.
ARPU = 21150 / 7 = 3021.43 -> 3021.
Live subscriptions at the end: 9 (the 8 patients P1 P2 P4 P6 P7 P8 P9 P11 and O1).
New on 30 June: P6 (P10 never got past incomplete). Cancelled on 30 June: P11.
Money on 30 June: payments 1500 + 3000 + 9900 succeeded, 1500 failed; one 500 refund (a failed
refund and transactions on 29 June and at 1 July 00:00 do not count).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from billwatch.accounts.models import OwnerType
from billwatch.billing.models import (
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
    Transaction,
    TransactionKind,
    TransactionStatus,
)
from billwatch.db import Database

DAY = date(2026, 6, 30)
BEFORE = datetime(2026, 5, 1, 9, tzinfo=UTC)
EXPECTED: dict[str, Any] = {
    "mrr_cents": 21150, "paying_customers": 7, "arpu_cents": 3021,
    "churn_customers_start": 9, "churn_customers_lost": 3, "churn_mrr_start_cents": 30900,
    "churn_mrr_lost_cents": 12750, "customer_churn_rate": 3 / 9,
    "revenue_churn_rate": 12750 / 30900, "active_subscriptions": 9,
    "active_by_owner_plan": {
        "patient": {"basic_monthly": 3, "plus_yearly": 1, "plus_monthly": 2, "basic_yearly": 1,
                    "clinic_monthly": 1},
        "organization": {"clinic_monthly": 1}},
    "new_subscriptions": 1, "cancelled_subscriptions": 1,
    "gross_revenue_cents": 14400, "payments_succeeded": 3, "payments_failed": 1,
    "payment_success_rate": 0.75, "refunds_count": 1, "refunds_cents": 500,
    "churn_window_days": 30, "definition_version": 2, "currency": "usd",
}
S = SubscriptionStatus


def june(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 6, day, hour, tzinfo=UTC)


def subscription(owner: uuid.UUID, plan: str, status: SubscriptionStatus, *,
                 created: datetime = BEFORE, owner_type: OwnerType = OwnerType.PATIENT,
                 source: SubscriptionSource = SubscriptionSource.STRIPE,
                 canceled_at: datetime | None = None, ended_at: datetime | None = None,
                 updated_at: datetime | None = None) -> Subscription:
    return Subscription(
        id=uuid.uuid4(), owner_type=owner_type, owner_id=owner, plan_code=plan, status=status,
        source=source, created_at=created, canceled_at=canceled_at, ended_at=ended_at,
        updated_at=updated_at or created, cancel_at_period_end=False,
        stripe_subscription_id=f"sub_{uuid.uuid4().hex[:12]}"
        if source is SubscriptionSource.STRIPE else None)


def transaction(kind: TransactionKind, status: TransactionStatus, amount: int,
                at: datetime) -> Transaction:
    return Transaction(id=uuid.uuid4(), owner_type=OwnerType.PATIENT, owner_id=uuid.uuid4(),
                       kind=kind, status=status, amount_cents=amount, currency="usd",
                       created_at=at, refunded_cents=0)


def subscriptions() -> list[Subscription]:
    o = {name: uuid.uuid4() for name in ("P1", "P2", "O1", "P3", "O2", "P4", "P5", "P6", "P7",
                                         "P8", "P9", "P10", "P11", "P12")}
    org = OwnerType.ORGANIZATION
    p11 = subscription(o["P11"], "basic_monthly", S.ACTIVE, canceled_at=june(30))
    p11.cancel_at_period_end = True
    return [
        subscription(o["P1"], "basic_monthly", S.ACTIVE),
        subscription(o["P2"], "plus_yearly", S.ACTIVE),
        subscription(o["O1"], "clinic_monthly", S.ACTIVE, owner_type=org),
        subscription(o["P3"], "basic_monthly", S.CANCELED, canceled_at=june(15),
                     ended_at=june(15)),
        subscription(o["O2"], "clinic_yearly", S.CANCELED, owner_type=org, canceled_at=june(1, 8),
                     ended_at=june(20)),
        subscription(o["P4"], "plus_monthly", S.CANCELED, canceled_at=june(10), ended_at=june(10)),
        subscription(o["P4"], "basic_monthly", S.ACTIVE, created=june(10)),
        subscription(o["P5"], "basic_monthly", S.CANCELED, created=june(5), canceled_at=june(25),
                     ended_at=june(25)),
        subscription(o["P6"], "plus_monthly", S.ACTIVE, created=june(30, 10)),
        subscription(o["P7"], "basic_yearly", S.PAST_DUE),
        subscription(o["P8"], "plus_monthly", S.TRIALING),
        subscription(o["P9"], "clinic_monthly", S.ACTIVE, source=SubscriptionSource.FREE_GRANT),
        subscription(o["P10"], "basic_monthly", S.INCOMPLETE, created=june(30, 9)),
        p11,
        subscription(o["P12"], "basic_monthly", S.UNPAID, updated_at=june(12)),
    ]


def transactions() -> list[Transaction]:
    pay, refund = TransactionKind.PAYMENT, TransactionKind.REFUND
    ok, failed = TransactionStatus.SUCCEEDED, TransactionStatus.FAILED
    return [
        transaction(pay, ok, 1500, june(30, 0)),
        transaction(pay, ok, 3000, june(30, 10)),
        transaction(pay, ok, 9900, june(30, 23)),
        transaction(pay, failed, 1500, june(30, 11)),
        transaction(refund, ok, 500, june(30, 14)),
        transaction(refund, failed, 700, june(30, 15)),
        transaction(pay, ok, 2500, june(29, 23)),
        transaction(pay, ok, 4000, datetime(2026, 7, 1, 0, tzinfo=UTC)),
    ]


async def seed_month(db: Database) -> None:
    async with db.unit_of_work() as session:
        session.add_all(subscriptions())
        await session.flush()
        session.add_all(transactions())
