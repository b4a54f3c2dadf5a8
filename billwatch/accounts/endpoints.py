"""Who am I: the authenticated user, for clients checking their token."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

from billwatch.access import CurrentActor
from billwatch.accounts.models import Role
from billwatch.accounts.service import get_user
from billwatch.http import AuditedRouter, SessionDep

router = AuditedRouter(tags=["accounts"])


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str
    role: Role


@router.get("/me", response_model=UserOut)
async def me(session: SessionDep, actor: CurrentActor) -> UserOut:
    """The user the bearer token belongs to."""
    return UserOut.model_validate(await get_user(session, actor.user_id))
