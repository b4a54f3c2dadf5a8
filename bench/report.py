"""Benchmark results: each figure with its baseline, ratio and target, as a table and as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure next to the baseline it is judged against."""

    suite: str
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    target: str
    met: bool | None
    """None when the figure has no target of its own (context for another figure)."""
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    limit: str | None = None
    """What holds the figure back, from the run's own measurements; printed when it misses."""


def ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline and not math.isnan(baseline) else None


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit in {"req/s", "rows/s", "ops/s", "events/s", "events"}:
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def table(figures: list[Figure], machine: dict[str, Any], scale: float, *,
          smoke: bool = False) -> Table:
    size = "smoke sizes: the figures mean nothing" if smoke else f"scale {scale:g}"
    title = (f"billwatch benchmarks ({size}): {machine['cpu']}, {machine['cores']} cores, "
             f"Python {machine['python']}, PostgreSQL {machine['postgresql']}")
    out = Table("figure", "measured", "baseline (same run)", "ratio", "target", "", title=title,
                title_justify="left")
    suite = None
    for f in figures:
        if f.suite != suite:
            suite = f.suite
            out.add_section()
            out.add_row(f"[bold]{suite}[/bold]")
        mark = {True: "[green]met[/green]", False: "[red]missed[/red]", None: ""}[f.met]
        baseline = f"{_number(f.baseline, f.unit)} {f.baseline_name}" if f.baseline_name else ""
        out.add_row(f"  {f.name}", _number(f.value, f.unit), baseline,
                    f"{f.ratio:.2f}" if f.ratio is not None else "", f.target, mark)
    return out


def write(figures: list[Figure], machine: dict[str, Any], scale: float,
          sizes: dict[str, int], folder: Path = RESULTS, *, smoke: bool = False) -> Path:
    """``<folder>/bench-<UTC time>.json``: machine, scale, sizes and every figure."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"bench-{stamp}.json"
    payload = {"measured_at": stamp, "machine": machine, "scale": scale, "smoke": smoke,
               "sizes": sizes, "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def render(console: Console, figures: list[Figure], machine: dict[str, Any], scale: float, *,
           smoke: bool = False) -> None:
    console.print(table(figures, machine, scale, smoke=smoke))
    missed = [f for f in figures if f.met is False]
    if missed:
        console.print("[bold]Missed targets and what limits them:[/bold]")
    for f in missed:
        console.print(f"  - {f.suite}, {f.name} ({f.target}): {f.limit or 'not analysed'}",
                      highlight=False)
