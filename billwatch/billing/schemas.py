"""Request and response bodies of the billing routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl

from billwatch.accounts.models import OwnerType
from billwatch.billing.models import (
    CheckoutStatus,
    OverrideKind,
    SubscriptionSource,
    SubscriptionStatus,
    TransactionKind,
    TransactionStatus,
)
from billwatch.billing.refunds import RefundReason

Reason = Field(min_length=3, max_length=500, description="Why; kept in the audit trail.")


class OwnerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner_type: OwnerType
    owner_id: uuid.UUID


class CheckoutRequest(OwnerBody):
    plan_code: str = Field(min_length=1, max_length=40)
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

    at_period_end: bool = Field(default=True, description="False cancels immediately.")
    reason: str | None = Field(default=None, max_length=500)


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
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: TransactionKind
    status: TransactionStatus
    amount_cents: int
    currency: str
    refunded_cents: int
    refund_of_id: uuid.UUID | None
    plan_code: str | None
    reason: str | None
    stripe_invoice_id: str | None
    created_at: datetime


class OverrideOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    owner_type: OwnerType
    owner_id: uuid.UUID
    kind: OverrideKind
    plan_code: str | None
    percent_off: int | None
    starts_at: datetime
    ends_at: datetime | None
    reason: str
    subscription_id: uuid.UUID | None
    revoked_at: datetime | None
    revoke_reason: str | None


class AccountOut(BaseModel):
    owner_type: OwnerType
    owner_id: uuid.UUID
    subscriptions: list[SubscriptionOut]
    transactions: list[TransactionOut]
    overrides: list[OverrideOut]


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_cents: int | None = Field(default=None, gt=0, description="Omit to refund the rest.")
    reason: RefundReason
    note: str | None = Field(default=None, max_length=500)


class FreeGrantRequest(OwnerBody):
    plan_code: str = Field(min_length=1, max_length=40)
    months: int | None = Field(default=None, ge=1, le=120, description="Omit for no end.")
    reason: str = Reason


class OverrideRequest(OwnerBody):
    kind: OverrideKind
    reason: str = Reason
    percent_off: int | None = None
    plan_code: str | None = Field(default=None, max_length=40)
    ends_at: AwareDatetime | None = None


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Reason
