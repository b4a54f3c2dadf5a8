"""``billwatch jobs ...`` (run a job by hand), ``billwatch worker`` and ``billwatch beat``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from billwatch.alerts.delivery import deliver_due
from billwatch.bootstrap import open_database
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin
from billwatch.db import Database, utcnow
from billwatch.jobs import daily_metrics, service
from billwatch.startup import checked_settings

jobs_app = typer.Typer(help="Billing jobs by hand: daily metrics, backfill, anomaly checks.",
                       no_args_is_help=True)
console = Console()
T = TypeVar("T")


def _run(work: Callable[[Database, Settings], Awaitable[T]]) -> T:
    """Run ``work`` with the configured database; afterwards deliver what it raised."""
    settings = checked_settings()

    async def main() -> T:
        db = open_database(settings)
        stop = None
        if settings.broker_url:  # hand alerts to the workers; embedded: deliver them below
            from billwatch.jobs.lifecycle import start_delivery
            stop = await start_delivery(db, settings)
        try:
            with bound_origin(Origin(job_id="cli")):
                result = await work(db, settings)
                if not settings.broker_url:
                    await deliver_due(db, settings)
            return result
        finally:
            if stop is not None:
                await stop()
            await db.dispose()

    return asyncio.run(main())


def _yesterday() -> date:
    return utcnow().date() - timedelta(days=1)


@jobs_app.command("daily-metrics")
def daily_metrics_command(
    day: Annotated[datetime | None, typer.Option("--date", formats=["%Y-%m-%d"],
                                                 help="UTC day; default yesterday.")] = None,
    alerts: Annotated[bool, typer.Option("--alerts/--no-alerts",
                                         help="Also raise churn and the daily report.")] = False,
) -> None:
    """Compute (or recompute) one day's metrics and store them."""
    target = day.date() if day else _yesterday()

    async def work(db: Database, settings: Settings) -> dict[str, Any] | None:
        await service.daily_metrics_job(db, settings, target, force=True, alerts=alerts)
        async with db.sessionmaker() as session:
            row = await daily_metrics.load(session, target)
        return {c.key: getattr(row, c.key) for c in row.__table__.columns} if row else None

    figures = _run(work)
    table = Table(title=f"billing on {target.isoformat()}", show_header=False)
    for key, value in (figures or {}).items():
        table.add_row(escape(key), escape(str(value)))
    console.print(table)


@jobs_app.command("backfill")
def backfill(
    start: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"], help="First day.")],
    end: Annotated[datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day.")],
) -> None:
    """Compute every day from --from to --to (inclusive), overwriting stored days; no mail."""
    if end < start:
        raise typer.BadParameter("--to is before --from")
    days = [start.date() + timedelta(days=n) for n in range((end - start).days + 1)]

    async def work(db: Database, settings: Settings) -> int:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("daily metrics", total=len(days))
            for day in days:
                progress.update(bar, description=f"daily metrics {day.isoformat()}")
                await service.daily_metrics_job(db, settings, day, force=True, alerts=False)
                progress.advance(bar)
        return len(days)

    console.print(f"[green]{_run(work)} days computed[/green]")


@jobs_app.command("anomaly-checks")
def anomaly_checks(
    hour: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%dT%H"], help="UTC hour YYYY-MM-DDTHH; default every recent hour.")] = None,
) -> None:
    """Run the hourly checks (refunds today, churn, payment failure rate) and raise alerts."""

    async def work(db: Database, settings: Settings) -> dict[str, Any]:
        if hour is None:
            return await service.hourly_catch_up(db, settings)
        outcome = await service.anomaly_checks_job(db, settings,
                                                   hour_start=hour.replace(tzinfo=UTC))
        return {"ran": outcome.ran, **outcome.result}

    console.print(_run(work))


@jobs_app.command("deliver-alerts")
def deliver_alerts() -> None:
    """Deliver every due alert now (embedded mode does this in the app by itself)."""

    async def work(db: Database, settings: Settings) -> dict[str, int]:
        return await deliver_due(db, settings)

    console.print(_run(work))


def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    pool: Annotated[str, typer.Option(help="prefork, solo or threads.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker for alert delivery and the scheduled jobs.

    Mingle and gossip stay off: billwatch revokes no tasks and keeps no worker-to-worker
    state, and without them a worker is ready at once.
    """
    from billwatch.jobs.celery_app import app as celery

    _require_broker()
    celery.worker_main(["worker", f"--concurrency={concurrency}", f"--pool={pool}",
                        f"--loglevel={loglevel}", f"--queues={checked_settings().celery_queue}",
                        "--without-mingle", "--without-gossip"])


def beat(
    schedule_file: Annotated[Path, typer.Option(help="Where beat keeps its state.")] = Path(
        "var/celerybeat-schedule"),
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run Celery beat: daily metrics at 00:00 UTC, anomaly checks hourly, an alert sweep."""
    from billwatch.jobs.celery_app import app as celery

    _require_broker()
    schedule_file.parent.mkdir(parents=True, exist_ok=True)
    celery.start(["beat", f"--schedule={schedule_file}", f"--loglevel={loglevel}"])


def _require_broker() -> None:
    if not checked_settings().broker_url:
        console.print("[red]BILLWATCH_BROKER_URL is empty: alerts and jobs run embedded in "
                      "`billwatch serve`; set a broker (redis://...) to run workers.[/red]")
        raise typer.Exit(2)
