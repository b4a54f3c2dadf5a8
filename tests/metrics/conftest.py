from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role, User
from billwatch.metrics import billing
from tests.support import Factory, test_settings


@pytest.fixture(autouse=True)
def billing_metrics_switch_restored() -> Iterator[None]:
    """A test that turns billing metrics off must not leave them off for the next one."""
    yield
    billing.configure(test_settings("sqlite+aiosqlite://", "http://127.0.0.1:9"))


@dataclass
class Cast:
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
async def cast(factory: Factory) -> Cast:
    return Cast(admin=await factory.user(Role.ADMIN), patient=await factory.user(Role.PATIENT),
                proxy=await factory.user(Role.PROXY))
