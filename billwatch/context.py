"""Where an operation comes from: request id and client IP, or a background job's id.

Bound once per request (or job) in contextvars, so the audit recorder and the logger can read
the origin without every function passing it along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import structlog


@dataclass(frozen=True, slots=True)
class Origin:
    request_id: str | None = None
    client_ip: str | None = None
    job_id: str | None = None


_origin: ContextVar[Origin] = ContextVar("billwatch_origin", default=Origin())  # noqa: B039 (frozen)


def current_origin() -> Origin:
    return _origin.get()


@contextmanager
def bound_origin(origin: Origin) -> Iterator[Origin]:
    """Bind ``origin`` (and its log fields) for the duration of a request or job."""
    token = _origin.set(origin)
    fields = {k: v for k, v in (("request_id", origin.request_id),
                                ("client_ip", origin.client_ip),
                                ("job_id", origin.job_id)) if v}
    with structlog.contextvars.bound_contextvars(**fields):
        try:
            yield origin
        finally:
            _origin.reset(token)
