"""Counters and histograms that obey the billing-metrics switch and close their own labels.

Most code counts through the small functions of :mod:`billwatch.metrics.billing`, but a metric
object is also importable and can be used directly (``WEBHOOKS_RECEIVED.labels(...).inc()``).
Both ways must honour ``BILLWATCH_ENABLE_BILLING_METRICS`` and the closed label sets, so the
metric classes themselves do it: ``labels()`` maps each value through the label's normaliser and,
while metrics are off, hands back a child that discards everything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from billwatch.config import Settings, get_settings
from billwatch.metrics import labels

Normaliser = Callable[[Any], str]


@dataclass(slots=True)
class Switch:
    """Whether billing metrics are on, and the plan codes that may appear as labels.

    ``None`` means "not configured yet": the first use reads the process settings, so a job
    worker or CLI that never builds the app still honours the setting.
    """

    enabled: bool | None = None
    plans: frozenset[str] | None = None

    def apply(self, settings: Settings) -> None:
        self.enabled = settings.enable_billing_metrics
        self.plans = frozenset(plan.code for plan in settings.plans)

    def is_enabled(self) -> bool:
        if self.enabled is None:
            self.apply(get_settings())
        return bool(self.enabled)

    def plan(self, code: object) -> str:
        if self.plans is None:
            self.apply(get_settings())
        return labels.closed(code, self.plans or ())


SWITCH = Switch()


class _Discard:
    """What ``labels()`` returns while billing metrics are off: accepts every call, keeps nothing."""

    def inc(self, amount: float = 1, exemplar: Any = None) -> None:
        return None

    def observe(self, amount: float, exemplar: Any = None) -> None:
        return None

    def time(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


DISCARD = _Discard()


def _closed_values(metric: Any, closed: Mapping[str, Normaliser], values: Iterable[object],
                   named: Mapping[str, object]) -> dict[str, str]:
    given = dict(named) if named else dict(zip(metric._labelnames, values, strict=True))
    return {name: closed[name](value) if name in closed else str(value)
            for name, value in given.items()}


class _ClosedLabels:
    """Shared by the billing metric classes: closed label values, silent while metrics are off."""

    _closed: dict[str, Normaliser]

    def _close_labels(self, closed: Mapping[str, Normaliser] | None, kwargs: dict[str, Any]) -> None:
        self._closed = dict(closed or {})
        kwargs["closed"] = self._closed  # children are built with the parent's constructor args

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Any:
        if not SWITCH.is_enabled():
            return DISCARD
        return super().labels(  # type: ignore[misc]
            **_closed_values(self, self._closed, labelvalues, labelkwargs))


class BillingCounter(_ClosedLabels, Counter):
    """A Counter whose label values are closed and which is silent while metrics are off."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 closed: Mapping[str, Normaliser] | None = None, **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)
        self._close_labels(closed, self._kwargs)

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if SWITCH.is_enabled():
            super().inc(amount, exemplar)


class BillingHistogram(_ClosedLabels, Histogram):
    """A Histogram whose label values are closed and which is silent while metrics are off."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 closed: Mapping[str, Normaliser] | None = None, **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)
        self._close_labels(closed, self._kwargs)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if SWITCH.is_enabled():
            super().observe(amount, exemplar)


def one_of(allowed: Iterable[str]) -> Normaliser:
    members = tuple(allowed)
    return lambda value: labels.closed(value, members)
