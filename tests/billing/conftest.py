from __future__ import annotations

from dataclasses import dataclass

import pytest

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role, User
from tests.support import Factory


@dataclass
class People:
    admin: User
    patient: User
    proxy: User

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef(OwnerType.PATIENT, self.patient.id)

    @property
    def owner_body(self) -> dict[str, str]:
        return {"owner_type": "patient", "owner_id": str(self.patient.id)}


@pytest.fixture
async def people(factory: Factory) -> People:
    return People(admin=await factory.user(Role.ADMIN), patient=await factory.user(Role.PATIENT),
                  proxy=await factory.user(Role.PROXY))
