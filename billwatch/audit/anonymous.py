"""Refusals of callers with no valid identity, aggregated so they cannot grow the trail at will.

A request with no or an invalid token, or a webhook with a missing or forged signature, proves
nothing about who sent it; writing one undeletable row each let one client add hundreds of rows
a second. Such refusals are bucketed per (event, route template, reason code — never the
free-text detail, which a caller could vary — client network — /24 for IPv4, /64 for IPv6 —
minute):

* the **first** refusal of a bucket writes its ordinary failure row at once (so a single
  refusal reads exactly as before, and alert rules still see it);
* the rest of the bucket is only counted in memory, and flushed as **one**
  ``audit.anonymous_refusals`` row carrying the count once the minute is over — by the next
  anonymous refusal after it, or at shutdown (:meth:`AnonymousRefusals.flush`).

Rows stay ordinary audit rows: appended, hashed, sealed and chained like every other, so the
trail stays append-only and tamper-evident (a mutable counter table would not be). The cost: a
process that dies loses at most its unflushed counts (the ``audit_anonymous_refusals_total``
counter, which counts every refusal, has them). Buckets are capped per minute; past the cap,
refusals share one bucket per (event, route, reason) with network ``other``, so spreading
requests over many networks cannot grow memory or rows either.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.context import Origin, bound_origin
from billwatch.db import Database, utcnow

log = structlog.get_logger(__name__)

SOURCES = ("http", "webhook")
MAX_BUCKETS = 256
"""Distinct buckets one process keeps per minute before folding new networks into ``other``:
the most first rows a minute can add, however many networks send."""


def client_network(client_ip: str | None) -> str:
    """The caller's network: /24 for IPv4, /64 for IPv6, ``unknown`` when there is no address."""
    if not client_ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class BucketKey:
    event: str
    route: str
    reason: str
    network: str
    minute: datetime


@dataclass(slots=True)
class Bucket:
    method: str
    status_code: int
    first_at: datetime
    last_at: datetime
    absorbed: int = 0
    """Refusals after the first, which wrote its own row."""


@dataclass(slots=True)
class AnonymousRefusals:
    """One process's buckets of the current (and not yet flushed) minutes."""

    max_buckets: int = MAX_BUCKETS
    buckets: dict[BucketKey, Bucket] = field(default_factory=dict)

    def admit(self, *, source: str, event: AuditEvent, route: str, method: str,
              status_code: int, reason: str, client_ip: str | None,
              now: datetime | None = None) -> bool:
        """Bucket one refusal; True when it is its bucket's first (the caller writes its row)."""
        moment = now or utcnow()
        minute = moment.replace(second=0, microsecond=0)
        key = BucketKey(event.value, route[:200], reason[:300], client_network(client_ip), minute)
        bucket = self.buckets.get(key)
        if bucket is None and len(self.buckets) >= self.max_buckets:
            key = BucketKey(key.event, key.route, key.reason, "other", minute)
            bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = Bucket(method, status_code, moment, moment)
            return True
        bucket.absorbed += 1
        bucket.last_at = moment
        return False

    def take_due(self, now: datetime | None = None, *, everything: bool = False
                 ) -> list[tuple[BucketKey, Bucket]]:
        """Remove and return the buckets whose minute is over (all of them with ``everything``)."""
        current = (now or utcnow()).replace(second=0, microsecond=0)
        due = [(key, bucket) for key, bucket in self.buckets.items()
               if everything or key.minute < current]
        for key, _bucket in due:
            del self.buckets[key]
        return due

    def has_due(self, now: datetime | None = None) -> bool:
        current = (now or utcnow()).replace(second=0, microsecond=0)
        return any(key.minute < current for key in self.buckets)

    async def flush(self, db: Database, *, now: datetime | None = None,
                    everything: bool = False) -> int:
        """Write one ``audit.anonymous_refusals`` row per finished bucket that absorbed any."""
        due = [(k, b) for k, b in self.take_due(now, everything=everything) if b.absorbed]
        if not due:
            return 0
        try:
            with bound_origin(Origin(job_id="audit:anonymous-refusals")):
                async with db.unit_of_work() as session:
                    for key, bucket in due:
                        recorder.record(
                            session, AuditEvent.ANONYMOUS_REFUSALS, actor=None,
                            outcome=Outcome.FAILURE, reason=key.reason,
                            data={"event": key.event, "route": key.route,
                                  "method": bucket.method, "status_code": bucket.status_code,
                                  "network": key.network, "minute": key.minute.isoformat(),
                                  "until": (key.minute + timedelta(minutes=1)).isoformat(),
                                  "count": bucket.absorbed,
                                  "first_at": bucket.first_at.isoformat(),
                                  "last_at": bucket.last_at.isoformat()})
        except Exception:  # the counter has them; a refused caller must not see a 500
            log.exception("anonymous_refusals_not_written", buckets=len(due))
            return 0
        return len(due)


def refusals_of(state: object) -> AnonymousRefusals:
    """The app's aggregator (``app.state.anonymous_refusals``), created on first use."""
    found = getattr(state, "anonymous_refusals", None)
    if not isinstance(found, AnonymousRefusals):
        found = AnonymousRefusals()
        setattr(state, "anonymous_refusals", found)  # noqa: B010 (starlette's State)
    return found


async def absorbed(state: object, db: Database, *, source: str, event: AuditEvent,
                   route: str | None, method: str, status_code: int, reason: str,
                   client_ip: str | None) -> bool:
    """True when this refusal was only counted (no row now); flushes finished minutes first."""
    counted = db.required_runtime().metrics.anonymous_refusals
    counted.labels(source=source if source in SOURCES else "http").inc()  # every refusal
    refusals = refusals_of(state)
    if refusals.has_due():
        await refusals.flush(db)
    return not refusals.admit(source=source, event=event, route=route or "?", method=method,
                              status_code=status_code, reason=reason, client_ip=client_ip)
