"""The people of the simulated month, seeded straight into the database.

billwatch has no sign-up API (accounts come from the platform it bills for; admins use
``billwatch users create``), so the demo creates users and clinics the same way, through the
accounts service in one transaction, and mints each person a bearer token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from billwatch.accounts import service as accounts
from billwatch.accounts.models import OwnerType, Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.demo.api import Owner, Person
from billwatch.demo.environment import Population

FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivo", "June", "Kofi",
         "Lena", "Milo", "Nia", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Vic")
LAST = ("Abe", "Brooks", "Costa", "Diaz", "Evans", "Fischer", "Gray", "Haddad", "Ito", "Jensen",
        "Khan", "Lopez", "Moreau", "Novak", "Okafor", "Park", "Quist", "Rossi", "Singh", "Tanaka")
CLINICS = ("Harbor", "Maple", "Northside", "Riverside", "Summit", "Lakeview", "Cedar", "Oakwood",
           "Bayfront", "Hillcrest", "Meadow", "Pinecrest")


@dataclass
class Cast:
    admins: list[Person]
    patients: list[Person]
    proxies: list[Person]
    clinics: list[tuple[Owner, Person]]
    """Each organization with its billing admin (a staff member who may check out for it)."""
    managers: dict[str, list[Person]] = field(default_factory=dict)
    """patient id -> the proxies assigned as that patient's billing managers."""

    def owner(self, patient: Person) -> Owner:
        return Owner(OwnerType.PATIENT, patient.id)

    def manages(self, proxy: Person, owner: Owner) -> bool:
        """Whether ``proxy`` is (still) one of the owner's billing managers."""
        return proxy in self.managers.get(str(owner.id), [])

    def acting_for(self, payer: Person, owner: Owner) -> Person:
        """Who can act on the owner's billing now: the payer, unless it is a proxy since removed."""
        if payer.id == owner.id or owner.type is OwnerType.ORGANIZATION or self.manages(payer, owner):
            return payer
        return next(p for p in self.patients if p.id == owner.id)


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


async def seed(db: Database, settings: Settings, population: Population) -> Cast:
    """Create admins, patients, proxies and clinics (each with a billing admin) in one transaction."""
    rng = random.Random(population.seed)

    def person(user: User) -> Person:
        return Person(user.id, user.email, mint_token(user, settings, ttl_seconds=7 * 24 * 3600))

    async with db.unit_of_work() as session:
        async def users(role: Role, count: int, label: str) -> list[Person]:
            return [person(await accounts.create_user(
                session, email=f"{label}{n:03d}@demo.test", name=_name(rng), role=role))
                for n in range(1, count + 1)]

        admins = await users(Role.ADMIN, 2, "admin")
        patients = await users(Role.PATIENT, population.patients, "patient")
        proxies = await users(Role.PROXY, population.proxies, "proxy")
        staff = await users(Role.PATIENT, population.organizations, "clinic-staff")
        clinics: list[tuple[Owner, Person]] = []
        for n, member in enumerate(staff):
            user = await session.get(User, member.id)
            assert user is not None
            org = await accounts.create_organization(
                session, name=f"{CLINICS[n % len(CLINICS)]} Clinic {n // len(CLINICS) + 1}",
                billing_admins=[user])
            clinics.append((Owner(OwnerType.ORGANIZATION, org.id), member))
    return Cast(admins, patients, proxies, clinics)
