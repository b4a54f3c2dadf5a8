"""Stripe customers, subscriptions, checkout sessions, transactions and billing overrides.

Money is integer minor units with an ISO currency. Every Stripe-side object we created carries
the idempotency key we sent with it, derived from our own row id.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.accounts.models import OwnerType
from billwatch.db import Base, Timestamped, UUIDPrimaryKey, enum_column, utcnow
from billwatch.redacted import RedactedString, RedactedText


class SubscriptionStatus(StrEnum):
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    CANCELED = "canceled"
    PAUSED = "paused"


class SubscriptionSource(StrEnum):
    STRIPE = "stripe"
    FREE_GRANT = "free_grant"


class CheckoutStatus(StrEnum):
    OPEN = "open"
    COMPLETE = "complete"
    EXPIRED = "expired"


class TransactionKind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


class TransactionStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class OverrideKind(StrEnum):
    FREE_SUBSCRIPTION = "free_subscription"
    DISCOUNT = "discount"
    PAYMENT_EXEMPTION = "payment_exemption"


class OverrideState(StrEnum):
    """Where an override stands; discounts and exemptions pass through Stripe first.

    ``pending`` (intent written, Stripe not yet answered) -> ``active`` (in effect at Stripe)
    or ``failed`` (Stripe refused; nothing changed); ``active`` -> ``revoking`` (one revoke
    claimed it) -> ``revoked``, or back to ``active`` when Stripe refused the removal. A free
    grant is ``active`` from its creation and ends ``revoked`` or ``expired``.
    """

    PENDING = "pending"
    ACTIVE = "active"
    FAILED = "failed"
    REVOKING = "revoking"
    REVOKED = "revoked"
    EXPIRED = "expired"


LIVE_OVERRIDE_STATES = (OverrideState.PENDING, OverrideState.ACTIVE, OverrideState.REVOKING)
"""States in which an override holds its owner's slot: a second one of its kind waits."""
ADJUSTMENT_KINDS = (OverrideKind.DISCOUNT, OverrideKind.PAYMENT_EXEMPTION)
"""Overrides applied at Stripe to an existing subscription (free grants are billwatch-only)."""
_LIVE_ADJUSTMENT = ("kind IN ('discount', 'payment_exemption') "
                    "AND state IN ('pending', 'active', 'revoking')")


class StripeCustomer(UUIDPrimaryKey, Timestamped, Base):
    """The Stripe customer of an owner, created on first need."""

    __tablename__ = "stripe_customers"
    __table_args__ = (UniqueConstraint("owner_type", "owner_id", name="owner"),)

    owner_type: Mapped[OwnerType] = mapped_column(enum_column(OwnerType, "customer_owner_type"))
    owner_id: Mapped[uuid.UUID]
    stripe_customer_id: Mapped[str] = mapped_column(RedactedString(255), unique=True)
    idempotency_key: Mapped[str] = mapped_column(RedactedString(255))


class Subscription(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        Index("ix_subscriptions_owner", "owner_type", "owner_id"),
        Index("ix_subscriptions_status_plan", "status", "plan_code"),
    )

    owner_type: Mapped[OwnerType] = mapped_column(enum_column(OwnerType, "sub_owner_type"))
    owner_id: Mapped[uuid.UUID]
    plan_code: Mapped[str] = mapped_column(String(40))
    status: Mapped[SubscriptionStatus] = mapped_column(enum_column(SubscriptionStatus, "sub_status"))
    source: Mapped[SubscriptionSource] = mapped_column(
        enum_column(SubscriptionSource, "sub_source"), default=SubscriptionSource.STRIPE)
    stripe_subscription_id: Mapped[str | None] = mapped_column(RedactedString(255), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(RedactedString(255))
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    managed_by_proxy_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    """The proxy (billing manager) who set this subscription up, if one did."""
    manager_assignment_id: Mapped[uuid.UUID | None]
    stripe_updated_at: Mapped[datetime | None]
    """Stripe's timestamp of the newest state applied, so late webhooks cannot regress it."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CheckoutSession(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "checkout_sessions"

    owner_type: Mapped[OwnerType] = mapped_column(enum_column(OwnerType, "checkout_owner_type"))
    owner_id: Mapped[uuid.UUID]
    plan_code: Mapped[str] = mapped_column(String(40))
    status: Mapped[CheckoutStatus] = mapped_column(enum_column(CheckoutStatus, "checkout_status"))
    stripe_session_id: Mapped[str] = mapped_column(RedactedString(255), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(RedactedString(255))
    url: Mapped[str] = mapped_column(RedactedText())
    created_by_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    manager_assignment_id: Mapped[uuid.UUID | None]
    idempotency_key: Mapped[str] = mapped_column(RedactedString(255), unique=True)


class Transaction(UUIDPrimaryKey, Timestamped, Base):
    """A payment or a refund, as Stripe reported it or as we asked for it."""

    __tablename__ = "transactions"
    __table_args__ = (
        Index("ix_transactions_owner_time", "owner_type", "owner_id", "created_at"),
        Index("ix_transactions_kind_time", "kind", "created_at"),
        Index("ix_transactions_kind_status_time", "kind", "status", "created_at"),
    )

    owner_type: Mapped[OwnerType] = mapped_column(enum_column(OwnerType, "tx_owner_type"))
    owner_id: Mapped[uuid.UUID]
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"))
    kind: Mapped[TransactionKind] = mapped_column(enum_column(TransactionKind, "tx_kind"))
    status: Mapped[TransactionStatus] = mapped_column(enum_column(TransactionStatus, "tx_status"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    refunded_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    """For a payment: how much of it has been refunded so far."""
    refund_of_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("transactions.id"))
    plan_code: Mapped[str | None] = mapped_column(String(40))
    stripe_invoice_id: Mapped[str | None] = mapped_column(RedactedString(255), index=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(RedactedString(255), index=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(RedactedString(255))
    stripe_refund_id: Mapped[str | None] = mapped_column(RedactedString(255), unique=True)
    reason: Mapped[str | None] = mapped_column(RedactedString(40))
    """Refund reason category, or payment failure category."""
    note: Mapped[str | None] = mapped_column(RedactedText())
    failure_code: Mapped[str | None] = mapped_column(RedactedString(80))
    attempt_count: Mapped[int | None]
    created_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    idempotency_key: Mapped[str | None] = mapped_column(RedactedString(255), unique=True)

    @property
    def refundable_cents(self) -> int:
        if self.kind is not TransactionKind.PAYMENT or self.status is not TransactionStatus.SUCCEEDED:
            return 0
        return self.amount_cents - self.refunded_cents


class BillingOverride(UUIDPrimaryKey, Timestamped, Base):
    """An admin's exception to normal billing: a free grant, a discount, an exemption."""

    __tablename__ = "billing_overrides"
    __table_args__ = (
        Index("ix_billing_overrides_owner", "owner_type", "owner_id"),
        Index("ix_billing_overrides_subscription", "subscription_id"),
        Index("uq_billing_overrides_live_adjustment", "owner_type", "owner_id", "kind",
              unique=True, postgresql_where=text(_LIVE_ADJUSTMENT),
              sqlite_where=text(_LIVE_ADJUSTMENT)),
    )

    owner_type: Mapped[OwnerType] = mapped_column(enum_column(OwnerType, "override_owner_type"))
    owner_id: Mapped[uuid.UUID]
    kind: Mapped[OverrideKind] = mapped_column(enum_column(OverrideKind, "override_kind"))
    plan_code: Mapped[str | None] = mapped_column(String(40))
    percent_off: Mapped[int | None]
    starts_at: Mapped[datetime] = mapped_column(default=utcnow)
    ends_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(RedactedText())
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"))
    created_by_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None]
    revoked_by_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    revoke_reason: Mapped[str | None] = mapped_column(RedactedText())
    state: Mapped[OverrideState] = mapped_column(enum_column(OverrideState, "override_state"),
                                                 default=OverrideState.ACTIVE)
    amount_off_cents: Mapped[int | None] = mapped_column(BigInteger)
    """A fixed discount per invoice, in ``currency`` (the catalogue's); or ``percent_off``."""
    currency: Mapped[str | None] = mapped_column(String(3))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    stripe_coupon_id: Mapped[str | None] = mapped_column(String(255))
    stripe_discount_id: Mapped[str | None] = mapped_column(String(255))
    applied_at: Mapped[datetime | None]
    """When Stripe confirmed the discount or pause; MRR counts it from here to ``revoked_at``."""
    expired_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]
    """When the state last moved; a ``pending`` or ``revoking`` one older than the sweeper's
    grace was left by a process that died between its Stripe call and its settlement."""
    failure_code: Mapped[str | None] = mapped_column(String(80))

    @property
    def is_active(self) -> bool:
        return self.state is OverrideState.ACTIVE
