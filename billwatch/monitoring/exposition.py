"""``GET /metrics``: the Prometheus exposition of counters, histograms and database gauges.

The route is deliberately outside :class:`~billwatch.http.AuditedRouter`: a scrape every few
seconds is not a billing operation and must not open a unit of work or write audit rows.
Each scrape builds its own collector: the runtime's registry and the process collectors (or, in
multiprocess mode, the sum of every worker's files) plus the database gauges of this process,
refreshed asynchronously first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from billwatch.config import Settings
from billwatch.db import Database
from billwatch.hardening import require_metrics_token
from billwatch.metrics import multiproc
from billwatch.metrics.billing import BillingMetrics
from billwatch.metrics.middleware import HttpMetricsMiddleware
from billwatch.monitoring.gauges import GaugeCache, GaugeCollector

router = APIRouter(tags=["ops"])


class _Scrape(Collector):
    """The union of several collectors, for one rendering."""

    def __init__(self, sources: Iterable[Collector]) -> None:
        self._sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


class MetricsExporter:
    """What ``/metrics`` renders for one app: its gauge cache and the right registry."""

    def __init__(self, db: Database, settings: Settings, metrics: BillingMetrics) -> None:
        self.metrics = metrics
        self.gauges = (GaugeCache.for_settings(db, settings)
                       if settings.enable_billing_metrics else None)

    def collector(self) -> Collector:
        sources: list[Collector] = []
        if multiproc.multiprocess_active():
            multiproc.mark_dead_workers()
            sources.append(MultiProcessCollector(None))  # type: ignore[no-untyped-call]
        else:  # the runtime's metrics, and the process's own (CPU, memory, GC) from the default
            sources.extend((self.metrics.registry, REGISTRY))
        if self.gauges is not None:
            sources.append(GaugeCollector(self.gauges))
        return _Scrape(sources)

    async def render(self, accept: str) -> tuple[bytes, str]:
        """Refresh the database gauges if stale, then encode everything for ``accept``."""
        if self.gauges is not None:
            await self.gauges.refresh()
        encoder, content_type = choose_encoder(accept)
        # Summing the multiprocess files is file I/O: keep it off the event loop.
        body = await asyncio.to_thread(encoder, self.collector())
        return body, content_type


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_metrics_token)],
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text."}},
            openapi_extra={"x-billwatch-auth": "bearer `BILLWATCH_METRICS_TOKEN` (none in development)"})
async def metrics(request: Request) -> Response:
    """Prometheus exposition: counters and histograms of all workers, gauges from the database."""
    exporter: MetricsExporter = request.app.state.metrics
    body, content_type = await exporter.render(request.headers.get("accept", ""))
    return Response(content=body, headers={"Content-Type": content_type})


def install_metrics(app: FastAPI, settings: Settings, db: Database,
                    metrics: BillingMetrics) -> None:
    """Wire ``metrics`` (the app runtime's) into ``app``: the HTTP middleware and ``/metrics``."""
    if multiproc.multiprocess_active():
        multiproc.mark_dead_workers()  # a worker (re)starting tidies up after the dead
    app.state.metrics = MetricsExporter(db, settings, metrics)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.include_router(router)

