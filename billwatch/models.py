"""Every mapped table, imported in one place so Alembic and tests see the whole schema."""

from billwatch.accounts.models import (
    Organization,
    OrganizationMember,
    RevokedToken,
    User,
    UserTokenCutoff,
)
from billwatch.alerts.models import Alert, AlertCooldown
from billwatch.audit.models import AuditLog
from billwatch.billing.models import (
    BillingOverride,
    CheckoutSession,
    StripeCustomer,
    Subscription,
    Transaction,
)
from billwatch.console.models import ConsoleSession, ConsoleSignInLink
from billwatch.db import Base
from billwatch.idempotency import IdempotencyKey
from billwatch.jobs.models import DailyBillingMetrics, JobRun
from billwatch.managers.models import BillingManagerAssignment
from billwatch.webhooks.models import StripeEvent

__all__ = [
    "Alert",
    "AlertCooldown",
    "AuditLog",
    "Base",
    "BillingManagerAssignment",
    "BillingOverride",
    "CheckoutSession",
    "ConsoleSession",
    "ConsoleSignInLink",
    "DailyBillingMetrics",
    "IdempotencyKey",
    "JobRun",
    "Organization",
    "OrganizationMember",
    "RevokedToken",
    "StripeCustomer",
    "StripeEvent",
    "Subscription",
    "Transaction",
    "User",
    "UserTokenCutoff",
]
