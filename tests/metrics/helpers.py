"""Reading metrics the way Prometheus does: parse a scrape into comparable samples."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from billwatch.accounts.actor import OwnerRef
from billwatch.billing.models import Subscription, SubscriptionSource, SubscriptionStatus
from billwatch.db import Database

SampleKey = tuple[str, frozenset[tuple[str, str]]]
Samples = dict[SampleKey, float]

PLATFORM_PREFIXES = ("process_", "python_")
"""Collectors that change on their own (CPU time, GC counts) and say nothing about billing."""


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def registry_samples(db: Database) -> Samples:
    """Every sample of ``db``'s runtime's registry, read without an HTTP request."""
    samples = parse(generate_latest(db.required_runtime().metrics.registry).decode())
    return {key: value for key, value in samples.items() if not key[0].startswith(PLATFORM_PREFIXES)}


def value(samples: Mapping[SampleKey, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Mapping[SampleKey, float], name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


def without(samples: Samples, *prefixes: str) -> Samples:
    return {key: v for key, v in samples.items() if not key[0].startswith(prefixes)}


# --- label hygiene -------------------------------------------------------------------------

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
STRIPE_ID_RE = re.compile(r"\b[a-z]{2,8}_(?=[A-Za-z0-9]*[0-9A-Z])[A-Za-z0-9]{8,}")
"""``cus_NffrFeUfNV2Hib``, ``ch_3MmlLr...``: a short prefix and a random part with digits or capitals."""
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
LONG_NUMBER_RE = re.compile(r"\d{5,}")


def suspicious(label_value: str) -> str | None:
    """Why ``label_value`` could identify a customer or an object, or None when it cannot."""
    for what, pattern in (("uuid", UUID_RE), ("stripe id", STRIPE_ID_RE), ("e-mail", EMAIL_RE),
                          ("number of 5+ digits", LONG_NUMBER_RE)):
        if pattern.search(label_value):
            return what
    return None


def label_offences(samples: Iterable[SampleKey]) -> list[str]:
    offences = []
    for name, labels in samples:
        for label, label_value in labels:
            if label == "le":  # histogram bucket bounds are numbers by design
                continue
            why = suspicious(label_value)
            if why:
                offences.append(f"{name}{{{label}={label_value!r}}}: {why}")
    return sorted(offences)


# --- database rows for the gauges ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sub:
    owner: OwnerRef
    plan: str
    status: SubscriptionStatus = SubscriptionStatus.ACTIVE
    source: SubscriptionSource = SubscriptionSource.STRIPE
    proxy_id: uuid.UUID | None = None
    duplicate: bool = False
    """A second live subscription of its owner, flagged as the webhook flags one (still billed)."""


async def add_subscriptions(db: Database, subs: Iterable[Sub]) -> list[Subscription]:
    """Subscription rows as the webhook handlers leave them, committed in one transaction."""
    now = datetime.now(UTC)
    rows: list[Subscription] = []
    async with db.unit_of_work() as session:
        for sub in subs:
            first = next((r.id for r in rows if (r.owner_type, r.owner_id) == (sub.owner.type,
                                                                               sub.owner.id)), None)
            row = Subscription(
                id=uuid.uuid4(), owner_type=sub.owner.type, owner_id=sub.owner.id,
                plan_code=sub.plan, status=sub.status, source=sub.source,
                stripe_subscription_id=(f"sub_test{uuid.uuid4().hex[:12]}"
                                        if sub.source is SubscriptionSource.STRIPE else None),
                current_period_start=now, current_period_end=now + timedelta(days=30),
                managed_by_proxy_id=sub.proxy_id,
                duplicate_of_id=(first or uuid.uuid4()) if sub.duplicate else None)
            session.add(row)
            rows.append(row)
    return rows
