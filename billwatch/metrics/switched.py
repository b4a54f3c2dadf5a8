"""Counters and histograms that obey the billing-metrics switch and close their own labels.

Most code counts through the methods of :class:`billwatch.metrics.billing.BillingMetrics`, but
its metric objects can also be used directly (``metrics.webhooks_received.labels(...).inc()``).
Both ways must honour ``BILLWATCH_ENABLE_BILLING_METRICS`` and the closed label sets, so the
metric classes themselves do it: ``labels()`` maps each value through the label's normaliser and,
while their runtime's switch is off, hands back a child that discards everything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from billwatch.config import Settings
from billwatch.metrics import labels

Normaliser = Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class Switch:
    """Whether one runtime's billing metrics are on, and the plan codes that may be labels."""

    enabled: bool
    plans: frozenset[str]

    @classmethod
    def of(cls, settings: Settings) -> Switch:
        return cls(settings.enable_billing_metrics,
                   frozenset(plan.code for plan in settings.plans))

    def is_enabled(self) -> bool:
        return self.enabled

    def plan(self, code: object) -> str:
        return labels.closed(code, self.plans)


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
    _switch: Switch

    def _close_labels(self, switch: Switch, closed: Mapping[str, Normaliser] | None,
                      kwargs: dict[str, Any]) -> None:
        self._switch = switch
        self._closed = dict(closed or {})
        kwargs["closed"] = self._closed  # children are built with the parent's constructor args
        kwargs["switch"] = switch

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Any:
        if not self._switch.is_enabled():
            return DISCARD
        return super().labels(  # type: ignore[misc]
            **_closed_values(self, self._closed, labelvalues, labelkwargs))


class BillingCounter(_ClosedLabels, Counter):
    """A Counter whose label values are closed and which is silent while metrics are off."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 switch: Switch, closed: Mapping[str, Normaliser] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)
        self._close_labels(switch, closed, self._kwargs)

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if self._switch.is_enabled():
            super().inc(amount, exemplar)


class BillingHistogram(_ClosedLabels, Histogram):
    """A Histogram whose label values are closed and which is silent while metrics are off."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                 switch: Switch, closed: Mapping[str, Normaliser] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)
        self._close_labels(switch, closed, self._kwargs)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if self._switch.is_enabled():
            super().observe(amount, exemplar)


def one_of(allowed: Iterable[str]) -> Normaliser:
    members = tuple(allowed)
    return lambda value: labels.closed(value, members)
