"""The HTTP load generator, run in a process of its own (``python -m bench.loadgen``).

Two ways to load a server:

* **closed loop** (:func:`run`): N connections, each sending its next request when the last one
  answered; it finds a server's maximum throughput, and its latencies are service times under
  that concurrency.
* **open loop** (:func:`run_open`): requests leave on a fixed schedule (``rate`` per second)
  whatever the server does, and each latency is counted from the request's *intended* send time.
  A server that falls behind therefore shows its queue in the figures instead of slowing the
  generator down (coordinated omission).

Requests are prepared before the clock starts (bodies built and signed) and handed to the
generator's process through a file in a private folder, so the benchmark process's own work
(building events, the servers' supervision) never competes with the event loop that times
requests. The generator still shares the machine's cores with the server under test, which is
why every figure is set next to a baseline loaded the same way in the same run.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

TIMED_OUT = 0
"""The status recorded for a request that got no answer within the open loop's timeout."""
CONNECTION_FAILED = 1
"""The status recorded for a request whose connection failed (open loop)."""
OPEN_CONNECTIONS = 256
"""Connections the open loop holds by default."""
_SPAWN_SLACK_SECONDS = 60.0
_REPO = Path(__file__).resolve().parent.parent


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
    offered_rate: float | None = None
    """Open loop only: the schedule's requests per second."""
    send_lag_p99_ms: float | None = None
    """Open loop only: p99 of how late requests left the generator after their due time."""

    @property
    def per_second(self) -> float:
        """Answered requests per second (timeouts and failed connections excluded)."""
        answered = self.requests - sum(n for status, n in self.statuses.items() if status < 100)
        return answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests, "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1), "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else 0,
            "statuses": self.statuses}
        if self.offered_rate is not None:
            out["offered_per_second"] = round(self.offered_rate, 1)
            out["send_lag_p99_ms"] = round(self.send_lag_p99_ms or 0.0, 2)
        return out


async def run(base_url: str, requests: Sequence[Request], *, concurrency: int, max_seconds: float,
              warmup: int = 0) -> LoadResult:
    """Closed loop: send ``requests`` in order over ``concurrency`` connections until done or out
    of time. The first ``warmup`` requests are sent the same way but left out of the figures."""
    return await _in_process({"mode": "closed", "base_url": base_url, "concurrency": concurrency,
                              "max_seconds": max_seconds, "warmup": warmup}, requests,
                             max_seconds * 2)


async def run_open(base_url: str, requests: Sequence[Request], *, rate: float, max_seconds: float,
                   answer_within: float = 5.0, connections: int = OPEN_CONNECTIONS) -> LoadResult:
    """Open loop: request ``i`` is due at ``i / rate`` seconds; latency counts from that moment.

    The schedule stops after ``max_seconds`` (or when the requests run out); a request with no
    answer ``answer_within`` seconds after it was due is recorded as :data:`TIMED_OUT` with that
    wait. Beyond ``connections`` requests in flight, the next ones wait for a connection, and
    that wait counts too.
    """
    return await _in_process({"mode": "open", "base_url": base_url, "rate": rate,
                              "max_seconds": max_seconds, "answer_within": answer_within,
                              "concurrency": connections},
                             requests, max_seconds + answer_within)


async def _in_process(plan: dict[str, Any], requests: Sequence[Request],
                      expected_seconds: float) -> LoadResult:
    """Run the generator in a child process and read its result; kill it if it overruns."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
        plan_path, result_path = Path(folder) / "plan.pickle", Path(folder) / "result.json"
        # pickle: the file is written and read by this run only, in a folder private to it
        plan_path.write_bytes(pickle.dumps({**plan, "requests": list(requests)}))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", str(plan_path), str(result_path),
            cwd=_REPO, stderr=asyncio.subprocess.PIPE)
        try:
            _, stderr = await asyncio.wait_for(child.communicate(),
                                               expected_seconds + _SPAWN_SLACK_SECONDS)
        except TimeoutError:
            child.kill()
            await child.wait()
            raise RuntimeError("the load generator overran its time and was killed") from None
        if child.returncode != 0:
            raise RuntimeError(f"the load generator failed: {stderr.decode()[-2000:]}")
        raw = json.loads(result_path.read_text())
    return LoadResult(raw["requests"], raw["seconds"], {int(k): v for k, v in raw["statuses"].items()},
                      raw["latencies_ms"], raw["first_error"], raw["offered_rate"],
                      raw["send_lag_p99_ms"])


class _Recorder:
    """What one measured pass collects."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.first_error: str | None = None
        self.send_lag_ms: list[float] = []
        """Open loop: how late each request left after its due time (the generator's own lag)."""

    async def send(self, http: aiohttp.ClientSession, request: Request, since: float) -> None:
        async with http.request(request.method, request.path, data=request.body,
                                headers=request.headers) as response:
            body = await response.read()
        self.answered(response.status, body, since)

    def answered(self, status: int, body: bytes, since: float) -> None:
        self.statuses[status] += 1
        if not 200 <= status < 300 and self.first_error is None:
            self.first_error = f"{status}: {body[:300].decode(errors='replace')}"
        self.latencies.append((time.perf_counter() - since) * 1000)

    def result(self, seconds: float, offered_rate: float | None = None) -> dict[str, Any]:
        lag = sorted(self.send_lag_ms)
        return {"requests": len(self.latencies), "seconds": seconds, "statuses": self.statuses,
                "latencies_ms": self.latencies, "first_error": self.first_error,
                "offered_rate": offered_rate,
                "send_lag_p99_ms": lag[round(0.99 * (len(lag) - 1))] if lag else None}


async def _closed(http: aiohttp.ClientSession, requests: Sequence[Request], concurrency: int,
                  max_seconds: float) -> dict[str, Any]:
    recorder = _Recorder()
    cursor = iter(range(len(requests)))
    started = time.perf_counter()
    deadline = started + max_seconds

    async def connection() -> None:
        for index in cursor:
            if time.perf_counter() > deadline:
                return
            await recorder.send(http, requests[index], time.perf_counter())

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return recorder.result(time.perf_counter() - started)


async def _open(http: aiohttp.ClientSession, requests: Sequence[Request], rate: float,
                max_seconds: float, answer_within: float) -> dict[str, Any]:
    recorder = _Recorder()

    async def one(request: Request, due: float) -> None:
        recorder.send_lag_ms.append((time.perf_counter() - due) * 1000)
        try:
            async with asyncio.timeout(due + answer_within - time.perf_counter()):
                await recorder.send(http, request, due)
        except TimeoutError:
            recorder.answered(TIMED_OUT, b"no answer in time", due)
        except (aiohttp.ClientError, OSError) as error:
            recorder.answered(CONNECTION_FAILED, repr(error).encode(), due)

    started = time.perf_counter() + 0.05
    in_flight = []
    for index, request in enumerate(requests):
        due = started + index / rate
        if due - started >= max_seconds:
            break
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        in_flight.append(asyncio.create_task(one(request, due)))
    await asyncio.gather(*in_flight)
    return recorder.result(time.perf_counter() - started, rate)


async def _drive(plan: dict[str, Any]) -> dict[str, Any]:
    requests: list[Request] = plan["requests"]
    connector = aiohttp.TCPConnector(limit=plan["concurrency"], force_close=False)
    async with aiohttp.ClientSession(plan["base_url"], connector=connector) as http:
        if plan["mode"] == "closed":
            warmup = plan["warmup"]
            if warmup:
                await _closed(http, requests[:warmup], plan["concurrency"], plan["max_seconds"])
            result = await _closed(http, requests[warmup:], plan["concurrency"],
                                   plan["max_seconds"])
        else:
            result = await _open(http, requests, plan["rate"], plan["max_seconds"],
                                 plan["answer_within"])
    return result


def _main(plan_path: Path, result_path: Path) -> None:
    result = asyncio.run(_drive(pickle.loads(plan_path.read_bytes())))
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
