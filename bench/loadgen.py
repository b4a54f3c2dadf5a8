"""An async HTTP load generator: N concurrent connections, a bounded request count and duration.

Requests are prepared before the clock starts (bodies built and signed), so the generator's own
cost per request is one aiohttp POST. It runs in the benchmark process, on the same machine as
the server: on a small machine it takes a share of the CPU, which is why every figure is set
next to a baseline measured the same way.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    latencies_ms: list[float]
    first_error: str | None = None
    """The body of the first answer that was not a success, to say what went wrong."""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 300)

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "per_second": round(self.per_second, 1), "p50_ms": round(self.percentile(50), 2),
                "p99_ms": round(self.percentile(99), 2),
                "mean_ms": round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else 0,
                "statuses": self.statuses}


async def run(base_url: str, requests: Sequence[Request], *, concurrency: int, max_seconds: float,
              warmup: int = 0) -> LoadResult:
    """Send ``requests`` in order over ``concurrency`` connections until done or out of time.

    The first ``warmup`` requests are sent the same way but left out of the figures.
    """
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(base_url, connector=connector) as http:
        if warmup:
            await _drive(http, requests[:warmup], concurrency, max_seconds)
        return await _drive(http, requests[warmup:], concurrency, max_seconds)


async def _drive(http: aiohttp.ClientSession, requests: Sequence[Request], concurrency: int,
                 max_seconds: float) -> LoadResult:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    cursor = iter(range(len(requests)))
    started = time.perf_counter()
    deadline = started + max_seconds

    async def connection() -> None:
        for index in cursor:
            if time.perf_counter() > deadline:
                return
            request = requests[index]
            sent = time.perf_counter()
            async with http.request(request.method, request.path, data=request.body,
                                    headers=request.headers) as response:
                body = await response.read()
                statuses[response.status] += 1
                if response.status >= 300 and not errors:
                    errors.append(f"{response.status}: {body[:300].decode(errors='replace')}")
            latencies.append((time.perf_counter() - sent) * 1000)

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return LoadResult(len(latencies), time.perf_counter() - started, dict(statuses), latencies,
                      errors[0] if errors else None)
