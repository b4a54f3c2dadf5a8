"""The simulated month: who does what, in which order, through the real API and real webhooks.

Week one: patients name proxies as billing managers, then patients, proxies and clinics check
out. Mid-month: people read their billing, admins grant free months, create and revoke
overrides and refund payments, and patients, proxies and admins cancel; a few requests are
refused (and audited as such) and one forged webhook is turned away. Month end: renewals are
charged, some cards decline up to the third attempt, and period-end cancellations take effect.
Every choice is drawn from one seeded generator before the concurrent work starts, so the same
seed gives the same month (the ids differ: they are fresh UUIDs each run).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from rich.progress import Progress

from billwatch.config import BillingInterval, Settings
from billwatch.demo.api import ApiError, BillwatchApi, Owner, Person
from billwatch.demo.population import Cast
from billwatch.demo.stripe_side import LiveSubscription, StripeSide

T = TypeVar("T")
PATIENT_PLANS = (("basic_monthly", 40), ("plus_monthly", 25), ("basic_yearly", 20), ("plus_yearly", 15))
CLINIC_PLANS = (("clinic_monthly", 70), ("clinic_yearly", 30))
REFUND_REASONS = ("requested_by_customer", "service_issue", "billing_error", "duplicate")
DECLINE_CODES = ("insufficient_funds", "do_not_honor", "generic_decline")


@dataclass
class Month:
    api: BillwatchApi
    side: StripeSide
    cast: Cast
    settings: Settings
    progress: Progress
    concurrency: int = 8
    seed: int = 7
    subs: list[LiveSubscription] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def admin(self) -> Person:
        return self.cast.admins[0]

    async def run(self) -> None:
        await self.assign_managers()
        await self.sign_ups()
        await self.mid_month()
        await self.month_end()

    async def _each(self, label: str, items: Sequence[T], work: Callable[[T], Awaitable[None]]) -> None:
        """Run ``work`` for every item, a few at a time, advancing one progress bar."""
        task = self.progress.add_task(label, total=len(items))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: T) -> None:
            async with gate:
                try:
                    await work(item)
                except ApiError as error:  # shown in the summary; the month goes on
                    self.problems.append(str(error))
                self.progress.advance(task)

        await asyncio.gather(*(one(item) for item in items))

    def _pick(self, weighted: Sequence[tuple[str, int]]) -> str:
        return self.rng.choices([code for code, _ in weighted], [w for _, w in weighted])[0]

    # --- week one -------------------------------------------------------------------------

    async def assign_managers(self) -> None:
        pairs: list[tuple[Person, Person]] = []
        candidates = self.rng.sample(self.cast.patients, min(len(self.cast.patients),
                                                             len(self.cast.proxies) * 2))
        for proxy in self.cast.proxies:
            for _ in range(self.rng.choice((1, 1, 2))):
                if candidates:
                    pairs.append((candidates.pop(), proxy))

        async def assign(pair: tuple[Person, Person]) -> None:
            patient, proxy = pair
            await self.api.assign_manager(patient, proxy)
            self.cast.managers.setdefault(str(patient.id), []).append(proxy)
            self.tally["billing managers assigned"] += 1

        await self._each("Patients name proxies as billing managers", pairs, assign)

    async def sign_ups(self) -> None:
        signing = self.rng.sample(self.cast.patients, round(len(self.cast.patients) * 0.72))
        plans: list[tuple[Owner, Person, str]] = []
        for patient in signing:
            proxies = self.cast.managers.get(str(patient.id))
            payer = self.rng.choice(proxies) if proxies and self.rng.random() < 0.6 else patient
            plans.append((self.cast.owner(patient), payer, self._pick(PATIENT_PLANS)))
        plans += [(owner, staff, self._pick(CLINIC_PLANS)) for owner, staff in self.cast.clinics]

        done: dict[int, LiveSubscription] = {}

        async def sign_up(item: tuple[int, tuple[Owner, Person, str]]) -> None:
            index, (owner, payer, code) = item
            plan = self.settings.plan(code)
            assert plan is not None
            checkout = await self.api.checkout(payer, owner, code)
            done[index] = await self.side.complete_checkout(checkout, plan, owner, payer)
            self.tally["proxy checkouts" if checkout.get("manager_assignment_id") else "checkouts"] += 1

        await self._each("Checkouts completed and paid", list(enumerate(plans)), sign_up)
        self.subs = [done[index] for index in sorted(done)]  # plan order, not completion order
        await self.remove_managers()

    async def remove_managers(self) -> None:
        """A couple of patients take billing back from a proxy."""
        managed = [(str(p.id), self.cast.managers[str(p.id)][-1]) for p in self.cast.patients
                   if self.cast.managers.get(str(p.id))][:2]
        patients = {str(p.id): p for p in self.cast.patients}

        async def remove(item: tuple[str, Person]) -> None:
            patient_id, proxy = item
            await self.api.remove_manager(patients[patient_id], proxy)
            self.cast.managers[patient_id].remove(proxy)
            self.tally["billing managers removed"] += 1

        await self._each("Patients remove a billing manager", managed, remove)

    # --- mid-month ------------------------------------------------------------------------

    async def mid_month(self) -> None:
        """Each live subscription gets at most one of: override, refund, cancellation."""
        live = [s for s in self.subs if not s.ended]
        self.rng.shuffle(live)
        refunds = max(6, len(live) // 20)  # more than five a day: the refund alert fires
        overrides = max(2, len(live) // 20)
        await self.reads(live[: max(4, len(live) * 2 // 5)])
        await self.grants_and_overrides(live[:overrides])
        await self.refunds(live[overrides:overrides + refunds])
        await self.cancellations(live[overrides + refunds:])
        await self.refusals()

    async def reads(self, live: list[LiveSubscription]) -> None:
        """Owners read their billing; a patient's proxy often does it for them."""
        readers: list[tuple[Person, LiveSubscription]] = []
        for sub in live:
            proxies = self.cast.managers.get(str(sub.owner.id), [])
            readers.append((self.rng.choice(proxies) if proxies and self.rng.random() < 0.6
                            else self.cast.acting_for(sub.payer, sub.owner), sub))

        async def read(item: tuple[Person, LiveSubscription]) -> None:
            reader, sub = item
            await self.api.account(reader, sub.owner)
            by_proxy = self.cast.manages(reader, sub.owner)
            self.tally["accounts read" + (" by proxies" if by_proxy else "")] += 1

        await self._each("Owners and proxies read their billing", readers, read)
        portal_users = [s for s in live if s.owner.type.value == "patient" and not s.by_proxy][:5]

        async def portal(sub: LiveSubscription) -> None:
            await self.api.portal(sub.payer, sub.owner)
            self.tally["customer portal opened"] += 1

        await self._each("Patients open the customer portal", portal_users, portal)

    async def grants_and_overrides(self, live: list[LiveSubscription]) -> None:
        subscribed = {s.owner.id for s in self.subs}
        unsubscribed = [p for p in self.cast.patients if p.id not in subscribed]
        grantees = [(patient, self.rng.choice((1, 3, 6, None)),
                     self.rng.choice(("basic_monthly", "plus_monthly")))
                    for patient in self.rng.sample(unsubscribed, min(10, len(unsubscribed)))]
        granted: list[str] = []

        async def grant(item: tuple[Person, int | None, str]) -> None:
            patient, months, code = item
            override = await self.api.free_grant(self.admin, self.cast.owner(patient), code, months,
                                                 "Hardship programme: free care plan")
            granted.append(override["id"])
            self.tally["free subscriptions granted"] += 1

        await self._each("Admins grant free subscriptions", grantees, grant)
        created: list[str] = []

        chosen = [(sub, self.rng.choice((10, 20, 50)) if self.rng.random() < 0.7 else None)
                  for sub in live]

        async def override(item: tuple[LiveSubscription, int | None]) -> None:
            sub, percent_off = item
            discount = percent_off is not None
            made = await self.api.create_override(
                self.admin, sub.owner, "discount" if discount else "payment_exemption",
                "Loyalty discount agreed by support" if discount else "Insurance dispute pending",
                percent_off=percent_off)
            created.append(made["id"])
            self.tally["overrides created"] += 1

        await self._each("Admins create billing overrides", chosen, override)
        to_revoke = granted[:2] + created[:3]

        async def revoke(override_id: str) -> None:
            await self.api.revoke_override(self.admin, override_id, "Programme period ended early")
            self.tally["overrides revoked"] += 1

        await self._each("Admins revoke overrides", to_revoke, revoke)

    async def refunds(self, live: list[LiveSubscription]) -> None:
        chosen = [(sub, self.rng.random() < 0.5, self.rng.choice(REFUND_REASONS)) for sub in live]

        async def refund(item: tuple[LiveSubscription, bool, str]) -> None:
            sub, partial, reason = item
            account = await self.api.account(self.admin, sub.owner)
            payment = next((t for t in account["transactions"]
                            if t["kind"] == "payment" and t["status"] == "succeeded"), None)
            if payment is None:
                self.problems.append(f"no paid transaction recorded for {sub.stripe_id}")
                return
            await self.api.refund(self.admin, payment["id"],
                                  amount_cents=payment["amount_cents"] // 2 if partial else None,
                                  reason=reason, note="Goodwill after support ticket")
            await self.side.report_refund(payment["stripe_invoice_id"])
            self.tally["refunds (partial)" if partial else "refunds (full)"] += 1

        await self._each("Admins refund payments", chosen, refund)

    async def cancellations(self, live: list[LiveSubscription]) -> None:
        share = max(1, len(live) // 15)
        by_patients = [s for s in live if not s.by_proxy and s.owner.type.value == "patient"][:share]
        by_proxies = [s for s in live if s.by_proxy and self.cast.manages(s.payer, s.owner)
                      ][: max(2, share // 2)]
        taken = {id(s) for s in by_patients + by_proxies}
        by_admins = [s for s in live if id(s) not in taken][: max(1, share // 3)]
        plan = [(s, s.payer, True) for s in by_patients]
        plan += [(s, s.payer, i >= 2) for i, s in enumerate(by_proxies)]
        plan += [(s, self.admin, False) for s in by_admins]

        async def cancel(item: tuple[LiveSubscription, Person, bool]) -> None:
            sub, who, at_period_end = item
            account = await self.api.account(who, sub.owner)
            ours = next((s for s in account["subscriptions"]
                         if s["stripe_subscription_id"] == sub.stripe_id), None)
            if ours is None:
                self.problems.append(f"subscription {sub.stripe_id} not recorded by billwatch")
                return
            await self.api.cancel(who, ours["id"], at_period_end=at_period_end,
                                  reason="Moving to another provider")
            if at_period_end:
                await self.side.report_cancel_at_period_end(sub)
            else:
                self.side.note_ended_by_billwatch(sub)  # the peer announces the deletion itself
            who_label = "admins" if who is self.admin else ("proxies" if sub.by_proxy else "owners")
            self.tally[f"cancellations by {who_label}"] += 1

        await self._each("Patients, proxies and admins cancel", plan, cancel)

    async def refusals(self) -> None:
        """Requests billwatch must refuse, each leaving one failure row in the audit trail."""
        managed = {pid for pid in self.cast.managers}
        stranger = next(p for p in self.cast.patients if str(p.id) not in managed)
        proxy, patient = self.cast.proxies[0], self.cast.patients[0]
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: self.api.checkout(proxy, self.cast.owner(stranger), "basic_monthly"),
            lambda: self.api.create_override(patient, self.cast.owner(patient), "discount",
                                             "I would like a discount", percent_off=90),
            lambda: self.api.checkout(patient, self.cast.owner(patient), "platinum_monthly"),
        ]

        async def refused(attempt: Callable[[], Awaitable[object]]) -> None:
            try:
                await attempt()
                self.problems.append("a request that should be refused succeeded")
            except ApiError as error:
                self.tally[f"requests refused ({error.status_code})"] += 1

        await self._each("Refused requests and a forged webhook", attempts, refused)
        if await self.side.forged_delivery() == 400:
            self.tally["forged webhooks rejected"] += 1

    # --- month end ------------------------------------------------------------------------

    async def month_end(self) -> None:
        monthly = [s for s in self.subs if not s.ended and s.plan.interval is BillingInterval.MONTH]
        ending = [s for s in monthly if s.ends_at_period_end]
        renewing = [s for s in monthly if not s.ends_at_period_end]
        declining = renewing[: max(3, len(renewing) // 10)]

        async def renew(sub: LiveSubscription) -> None:
            await self.side.renew(sub)
            self.tally["renewals paid"] += 1

        dunned = [(sub, self.rng.choice((2, 3, None, None)), self.rng.choice(DECLINE_CODES))
                  for sub in declining]

        async def dun(item: tuple[LiveSubscription, int | None, str]) -> None:
            sub, recovers_on, decline_code = item
            result = await self.side.dunning(sub, recovers_on=recovers_on, decline_code=decline_code)
            self.tally["renewals paid after retries" if result else "subscriptions lost to dunning"] += 1

        async def end(sub: LiveSubscription) -> None:
            await self.side.end(sub)
            self.tally["period-end cancellations effective"] += 1

        await self._each("Renewals charged", renewing[len(declining):], renew)
        await self._each("Declined renewals retried (attempts 1-3)", dunned, dun)
        await self._each("Period-end cancellations take effect", ending, end)
