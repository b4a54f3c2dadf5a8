"""Who is acting, and on whose behalf."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from billwatch.accounts.models import OwnerType, Role


@dataclass(frozen=True, slots=True)
class Actor:
    """An authenticated user; a proxy acting for a patient carries the assignment that allows it."""

    user_id: uuid.UUID
    role: Role
    via_assignment_id: uuid.UUID | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def acting_through(self, assignment_id: uuid.UUID) -> Actor:
        return Actor(self.user_id, self.role, assignment_id)


@dataclass(frozen=True, slots=True)
class SystemActor:
    """Stripe or a scheduled job: no user, named by what it is."""

    name: str


@dataclass(frozen=True, slots=True)
class OwnerRef:
    type: OwnerType
    id: uuid.UUID
