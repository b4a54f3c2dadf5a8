"""Every mapped table, imported in one place so Alembic and tests see the whole schema."""

from billwatch.accounts.models import Organization, OrganizationMember, User
from billwatch.audit.models import AuditLog
from billwatch.billing.models import (
    BillingOverride,
    CheckoutSession,
    StripeCustomer,
    Subscription,
    Transaction,
)
from billwatch.db import Base
from billwatch.managers.models import BillingManagerAssignment

__all__ = [
    "AuditLog",
    "Base",
    "BillingManagerAssignment",
    "BillingOverride",
    "CheckoutSession",
    "Organization",
    "OrganizationMember",
    "StripeCustomer",
    "Subscription",
    "Transaction",
    "User",
]
