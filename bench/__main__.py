"""``python -m bench``: run the suites, print the table, write the JSON next to the code.

``--scale`` multiplies every size (1 = the sizes the targets are stated for; 0.1 for a quick
pass); ``--only`` picks suites by name.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

from bench import machine, report
from bench.context import BenchContext
from bench.scratch import ADMIN_DSN, drops_deferred
from bench.suites import (
    audit_overhead,
    audit_query,
    audit_trail,
    burst,
    daily_metrics,
    processing,
    webhooks,
)

Suite = Callable[[BenchContext], Awaitable[None]]
SUITES: dict[str, Suite] = {
    "webhooks": webhooks.run,
    "processing": processing.run,
    "burst": burst.run,
    "overhead": audit_overhead.run,
    "daily": daily_metrics.run,
    "audit": audit_trail.run,
    "query": audit_query.run,
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1)")
    parser.add_argument("--only", default=",".join(SUITES),
                        help=f"comma-separated suites (default all: {', '.join(SUITES)})")
    parser.add_argument("--keep-databases", action="store_true",
                        help="leave the scratch PostgreSQL databases for inspection")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: check that every suite runs (figures are meaningless)")
    parser.add_argument("--results", type=Path, default=report.RESULTS,
                        help="folder for the JSON report (default bench/results)")
    return parser.parse_args()


async def main() -> None:
    args = _arguments()
    # a log file gets a table as wide as a terminal would show it, not 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=120)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suites: {', '.join(sorted(unknown))}")
    described = await machine.describe(ADMIN_DSN)
    with tempfile.TemporaryDirectory(prefix="billwatch-bench-") as logs:
        ctx = BenchContext(console, args.scale, Path(logs), args.keep_databases, args.smoke)
        async with drops_deferred():  # the figures are out before the databases go
            await _run_suites(ctx, chosen)
            report.render(console, ctx.figures, described, args.scale, smoke=args.smoke)
            path = report.write(ctx.figures, described, args.scale, ctx.sizes, args.results,
                                smoke=args.smoke)
            console.print(f"JSON: {path}")


async def _run_suites(ctx: BenchContext, chosen: list[str]) -> None:
    for name in chosen:
        started = time.monotonic()
        ctx.console.rule(f"[bold]{name}")
        await SUITES[name](ctx)
        ctx.console.print(f"  {name} took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
