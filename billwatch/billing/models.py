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

from billwatch.accounts.models import OwnerType, Role
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


LIVE_SUBSCRIPTION_STATUSES = (
    SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.INCOMPLETE, SubscriptionStatus.UNPAID, SubscriptionStatus.PAUSED)
"""Statuses in which an owner still has a subscription (and may not start another)."""

ACTIVE_SUBSCRIPTION_STATUSES = (
    SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE)
"""Counted as active subscriptions (the gauge, the daily job and the demo's summary)."""

REVENUE_SUBSCRIPTION_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
"""Counted in MRR: paying or expected to pay; trials are excluded."""

NEVER_PAID_SUBSCRIPTION_STATUSES = (
    SubscriptionStatus.TRIALING, SubscriptionStatus.INCOMPLETE,
    SubscriptionStatus.INCOMPLETE_EXPIRED)
"""A subscription in one of these has not paid yet, so it never counts as churned revenue."""

STOPPED_SUBSCRIPTION_STATUSES = (
    SubscriptionStatus.CANCELED, SubscriptionStatus.UNPAID, SubscriptionStatus.PAUSED,
    SubscriptionStatus.INCOMPLETE_EXPIRED)
"""The subscription no longer charges: its owner is lost from the time it stopped."""

NOT_STARTED_SUBSCRIPTION_STATUSES = (
    SubscriptionStatus.INCOMPLETE, SubscriptionStatus.INCOMPLETE_EXPIRED)
"""The first payment never went through: not a customer yet."""

LIVE_WHERE = ("duplicate_of_id IS NULL AND status IN ("
              + ", ".join(f"'{s.value}'" for s in LIVE_SUBSCRIPTION_STATUSES) + ")")
"""The predicate of the one-live-subscription-per-owner index (and of migration 0420)."""


class SubscriptionSource(StrEnum):
    STRIPE = "stripe"
    FREE_GRANT = "free_grant"


class CheckoutStatus(StrEnum):
    PENDING = "pending"
    """The intent: recorded, Stripe not yet (known to be) asked."""
    OPEN = "open"
    COMPLETE = "complete"
    EXPIRED = "expired"
    FAILED = "failed"
    """Stripe refused to open the session; nothing exists there."""


OPEN_CHECKOUT_STATUSES = (CheckoutStatus.PENDING, CheckoutStatus.OPEN)
"""Checkouts that block another one for the same owner (one partial unique index)."""


class IntentStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CancelMode(StrEnum):
    PERIOD_END = "period_end"
    IMMEDIATELY = "immediately"


class RefundReason(StrEnum):
    """The closed set of refund reasons; metrics label by it, so it must stay small."""

    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    SERVICE_ISSUE = "service_issue"
    BILLING_ERROR = "billing_error"
    OTHER = "other"


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
        Index("uq_subscriptions_one_live_per_owner", "owner_type", "owner_id", unique=True,
              sqlite_where=text(LIVE_WHERE), postgresql_where=text(LIVE_WHERE)),
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
    duplicate_of_id: Mapped[uuid.UUID | None]
    """Set on a second live subscription Stripe reported for an owner who already had one.

    Such a row is kept (the owner is being billed for it) but flagged, alerted and left out of
    the one-live-subscription-per-owner index, for an admin to resolve.
    """


class CheckoutSession(UUIDPrimaryKey, Timestamped, Base):
    """A checkout from its intent (``pending``) to Stripe's session and its end.

    At most one ``pending`` or ``open`` checkout per owner (a partial unique index), so an owner
    and their proxy checking out at once share one session instead of paying twice.
    """

    __tablename__ = "checkout_sessions"
    __table_args__ = (
        Index("uq_checkout_sessions_one_open_per_owner", "owner_type", "owner_id", unique=True,
              sqlite_where=text("status IN ('pending', 'open')"),
              postgresql_where=text("status IN ('pending', 'open')")),
    )

    owner_type: Mapped[OwnerType] = mapped_column(enum_column(OwnerType, "checkout_owner_type"))
    owner_id: Mapped[uuid.UUID]
    plan_code: Mapped[str] = mapped_column(String(40))
    status: Mapped[CheckoutStatus] = mapped_column(enum_column(CheckoutStatus, "checkout_status"))
    stripe_session_id: Mapped[str | None] = mapped_column(RedactedString(255), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(RedactedString(255))
    url: Mapped[str | None] = mapped_column(RedactedText())
    created_by_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    manager_assignment_id: Mapped[uuid.UUID | None]
    idempotency_key: Mapped[str] = mapped_column(RedactedString(255), unique=True)
    expires_at: Mapped[datetime | None]
    """When Stripe stops accepting payment on this session (we ask for it at creation)."""
    settled_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(RedactedText())
    """Stripe's (redacted) refusal, for a failed intent."""
    success_url: Mapped[str | None] = mapped_column(RedactedText())
    cancel_url: Mapped[str | None] = mapped_column(RedactedText())
    """Kept with the intent: a retry must send Stripe the very parameters of the first call."""


class SubscriptionCancellation(UUIDPrimaryKey, Timestamped, Base):
    """The intent to cancel a subscription at Stripe, and how it settled.

    One ``pending`` cancellation per subscription (a partial unique index): concurrent cancels
    call Stripe once. The actor is kept so a sweeper or webhook settling it names who asked.
    """

    __tablename__ = "subscription_cancellations"
    __table_args__ = (
        Index("uq_subscription_cancellations_one_pending", "subscription_id", unique=True,
              sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
        Index("ix_subscription_cancellations_status_time", "status", "created_at"),
    )

    subscription_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subscriptions.id"))
    mode: Mapped[CancelMode] = mapped_column(enum_column(CancelMode, "cancel_mode"))
    status: Mapped[IntentStatus] = mapped_column(enum_column(IntentStatus, "cancel_status"))
    idempotency_key: Mapped[str] = mapped_column(RedactedString(255), unique=True)
    actor_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    actor_role: Mapped[Role] = mapped_column(enum_column(Role, "cancel_actor_role"))
    manager_assignment_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(RedactedText())
    error: Mapped[str | None] = mapped_column(RedactedText())
    settled_at: Mapped[datetime | None]


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
