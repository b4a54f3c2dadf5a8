"""The Stripe customer behind an owner, created on first need (outside any transaction)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import OwnerRef
from billwatch.billing.models import StripeCustomer
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway


async def find_customer(session: AsyncSession, owner: OwnerRef) -> StripeCustomer | None:
    result = await session.scalars(select(StripeCustomer).where(
        StripeCustomer.owner_type == owner.type, StripeCustomer.owner_id == owner.id))
    return result.first()


def customer_key(owner: OwnerRef) -> str:
    return f"customer:{owner.type.value}:{owner.id}"


async def ensure_customer(db: Database, gateway: PaymentsGateway, *, owner: OwnerRef,
                          display: tuple[str, str | None]) -> tuple[StripeCustomer, bool]:
    """The owner's Stripe customer, created at Stripe with no transaction open, then recorded.

    The idempotency key is derived from the owner, so a retry (or a concurrent checkout of the
    same owner) gets the same Stripe customer back; the unique owner index keeps one row. The
    creation is audited inside the row of the operation that needed it (``customer_created``).
    """
    name, email = display
    key = customer_key(owner)
    stripe_id = await gateway.create_customer(
        email=email, name=name, idempotency_key=key,
        metadata={"billwatch_owner_type": owner.type.value, "billwatch_owner_id": str(owner.id)})
    async with db.unit_of_work() as session:
        customer = StripeCustomer(id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
                                  stripe_customer_id=stripe_id, idempotency_key=key)
        try:
            async with session.begin_nested():
                session.add(customer)
        except IntegrityError:
            existing = await find_customer(session, owner)
            if existing is None:
                raise
            return existing, False
    return customer, True
