"""HTTP request count, latency and concurrency, labelled by route template.

A pure ASGI middleware (no ``BaseHTTPMiddleware``), so streaming responses and the request's
context variables pass through untouched. The ``route`` label is the template the router matched
(``/billing/subscriptions/{subscription_id}/cancel``), never the raw path, which would carry ids;
a request that matched nothing is ``unmatched``.

These count every request, including the ones whose transaction rolled back: they describe the
HTTP service, not billing, so they stay on when billing metrics are turned off.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billwatch.metrics import labels
from billwatch.metrics.billing import BillingMetrics


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else labels.UNMATCHED_ROUTE


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: BillingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics = self.metrics
        metrics.http_in_progress.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            metrics.http_in_progress.dec()
            method = labels.http_method(scope["method"])
            route = route_template(scope)
            metrics.http_requests.labels(method=method, route=route,
                                         status=labels.http_status(status)).inc()
            metrics.http_seconds.labels(method=method, route=route).observe(
                time.perf_counter() - started)
