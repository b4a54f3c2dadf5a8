"""Request and response bodies of the billing routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from billwatch.accounts.models import OwnerType
from billwatch.billing.models import (
    CheckoutStatus,
    OverrideKind,
    OverrideState,
    SubscriptionSource,
    SubscriptionStatus,
    TransactionKind,
    TransactionStatus,
)
from billwatch.billing.refunds import RefundReason
from billwatch.schema_types import BoundedDatetime, Int64, Line, StrictBool, Text

Reason = Field(min_length=3, max_length=500, description="Why; kept in the audit trail.")


class OwnerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner_type: OwnerType
    owner_id: uuid.UUID


class CheckoutRequest(OwnerBody):
    plan_code: Line = Field(min_length=1, max_length=40)
    success_url: HttpUrl | None = None
    cancel_url: HttpUrl | None = None


class CheckoutOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner_type: OwnerType
    owner_id: uuid.UUID
    plan_code: str
    status: CheckoutStatus
    stripe_session_id: str | None
    url: str | None
    expires_at: datetime | None
    manager_assignment_id: uuid.UUID | None


class PortalRequest(OwnerBody):
    return_url: HttpUrl | None = None


class PortalOut(BaseModel):
    id: str
    url: str


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_period_end: StrictBool = Field(default=True, description="False cancels immediately.")
    reason: Text | None = Field(default=None, max_length=500)


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner_type: OwnerType
    owner_id: uuid.UUID
    plan_code: str
    status: SubscriptionStatus
    source: SubscriptionSource
    stripe_subscription_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    managed_by_proxy_id: uuid.UUID | None


class TransactionOut(BaseModel):
    """A payment or refund as its owner sees it: what happened, not the admins' why."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: TransactionKind
    status: TransactionStatus
    amount_cents: int
    currency: str
    refunded_cents: int
    refund_of_id: uuid.UUID | None
    plan_code: str | None
    stripe_invoice_id: str | None
    created_at: datetime


class TransactionAdminOut(TransactionOut):
    """The same transaction for admins, with the internal reason, note and acting admin."""

    reason: str | None
    note: str | None
    failure_code: str | None
    created_by_user_id: uuid.UUID | None


class OverrideOut(BaseModel):
    """A billing override as its owner sees it: what was decided and for how long."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner_type: OwnerType
    owner_id: uuid.UUID
    kind: OverrideKind
    plan_code: str | None
    percent_off: int | None
    starts_at: datetime
    ends_at: datetime | None
    subscription_id: uuid.UUID | None
    revoked_at: datetime | None


class OverrideAdminOut(OverrideOut):
    """The same override for admins, with why it was made and revoked, and by whom."""

    reason: str
    revoke_reason: str | None
    created_by_user_id: uuid.UUID
    revoked_by_user_id: uuid.UUID | None
    state: OverrideState
    amount_off_cents: int | None
    currency: str | None
    applied_at: datetime | None
    expired_at: datetime | None


class _Account(BaseModel):
    owner_type: OwnerType
    owner_id: uuid.UUID
    subscriptions: list[SubscriptionOut]


class AccountOut(_Account):
    """An owner's billing as the owner, its proxies and its organization's members see it."""

    transactions: list[TransactionOut]
    overrides: list[OverrideOut]


class AccountAdminOut(_Account):
    """An owner's billing as an admin sees it: the internal fields of each row included."""

    transactions: list[TransactionAdminOut]
    overrides: list[OverrideAdminOut]


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_cents: Int64 | None = Field(default=None, gt=0, description="Omit to refund the rest.")
    reason: RefundReason
    note: Text | None = Field(default=None, max_length=500)


class FreeGrantRequest(OwnerBody):
    plan_code: Line = Field(min_length=1, max_length=40)
    months: Int64 | None = Field(default=None, ge=1, le=120, description="Omit for no end.")
    reason: Text = Reason


class OverrideRequest(OwnerBody):
    kind: OverrideKind
    reason: Text = Reason
    percent_off: Int64 | None = None
    amount_off_cents: Int64 | None = Field(default=None, gt=0, le=2**53)
    """A fixed amount off each invoice, in the catalogue's currency (instead of percent_off)."""
    plan_code: Line | None = Field(default=None, max_length=40)
    ends_at: BoundedDatetime | None = None


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text = Reason
