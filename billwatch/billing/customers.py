"""The Stripe customer behind an owner, created on first need."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import OwnerRef
from billwatch.billing.models import StripeCustomer
from billwatch.payments.gateway import PaymentsGateway


async def find_customer(session: AsyncSession, owner: OwnerRef) -> StripeCustomer | None:
    result = await session.scalars(select(StripeCustomer).where(
        StripeCustomer.owner_type == owner.type, StripeCustomer.owner_id == owner.id))
    return result.first()


async def ensure_customer(session: AsyncSession, gateway: PaymentsGateway, *,
                          owner: OwnerRef) -> tuple[StripeCustomer, bool]:
    """The owner's Stripe customer and whether this call created it.

    The creation is audited inside the row of the operation that needed it (one operation, one
    row). The idempotency key is derived from the owner, so a request retried after a rollback
    gets the same Stripe customer back instead of a second one.
    """
    existing = await find_customer(session, owner)
    if existing is not None:
        return existing, False
    name, email = await accounts.owner_display(session, owner)
    key = f"customer:{owner.type.value}:{owner.id}"
    stripe_id = await gateway.create_customer(
        email=email, name=name, idempotency_key=key,
        metadata={"billwatch_owner_type": owner.type.value, "billwatch_owner_id": str(owner.id)})
    customer = StripeCustomer(id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
                              stripe_customer_id=stripe_id, idempotency_key=key)
    session.add(customer)
    await session.flush()
    return customer, True
