"""``billwatch webhooks list | replay | reconcile | process | prune``: the operator's side of the
event store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from billwatch.bootstrap import open_database
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.errors import NotFound
from billwatch.logging import configure_logging
from billwatch.payments.gateway import PaymentsGateway
from billwatch.startup import checked_settings
from billwatch.webhooks import inbox, retention, service, store
from billwatch.webhooks.models import EventStatus, StripeEvent
from billwatch.webhooks.processing import ProcessOutcome, ProcessResult

app = typer.Typer(help="Stripe webhook events: list, replay, reconcile, process, prune.",
                  no_args_is_help=True)
console = Console()
T = TypeVar("T")

_STYLE = {ProcessOutcome.PROCESSED: "green", ProcessOutcome.IGNORED: "yellow",
          ProcessOutcome.DUPLICATE: "cyan", ProcessOutcome.FAILED: "red",
          ProcessOutcome.RETRYING: "magenta"}


def _run(work: Callable[[Database, PaymentsGateway, Settings], Awaitable[T]]) -> T:
    settings = checked_settings()
    configure_logging(settings.log_level, json=settings.log_json)

    async def main() -> T:
        db = open_database(settings)
        try:
            return await work(db, PaymentsGateway(settings), settings)
        finally:
            await db.dispose()

    return asyncio.run(main())


def _print_result(result: ProcessResult) -> None:
    detail = result.error or result.note or ""
    console.print(f"[{_STYLE[result.outcome]}]{result.outcome.value:<9}[/] "
                  f"{escape(result.event_id)} {escape(result.type)} "
                  f"(attempts {result.attempts}) {escape(detail)}", highlight=False)


@app.command("list")
def list_events(
    status: Annotated[EventStatus | None, typer.Option(help="Only events in this status.")] = None,
    type_prefix: Annotated[str | None, typer.Option("--type", help="Type prefix, e.g. invoice.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 50,
) -> None:
    """Stored Stripe events, newest first."""

    async def work(db: Database, _gateway: PaymentsGateway, _settings: Settings) -> list[StripeEvent]:
        async with db.sessionmaker() as session:
            return list(await store.list_events(session, status=status, type_prefix=type_prefix,
                                                limit=limit))

    rows = _run(work)
    table = Table("event id", "type", "status", "source", "attempts", "stripe created",
                  "received", "last error")
    for row in rows:
        # signed by Stripe is not written by us: stored text is shown, never read as markup
        table.add_row(escape(row.stripe_event_id), escape(row.type), row.status.value,
                      row.source.value, str(row.attempts),
                      row.stripe_created.isoformat(timespec="seconds"),
                      row.received_at.isoformat(timespec="seconds"),
                      escape((row.last_error or "")[:80]))
    console.print(table)
    console.print(f"{len(rows)} event(s)")


@app.command()
def replay(
    event_id: Annotated[str | None, typer.Argument(help="The Stripe event id (evt_...).")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Replay every failed event.")] = False,
) -> None:
    """Run stored events through their handlers again; exits 1 if any still fails."""
    if (event_id is None) == (not failed):
        raise typer.BadParameter("give either an EVENT_ID or --failed")

    async def work(db: Database, gateway: PaymentsGateway, settings: Settings) -> list[ProcessResult]:
        if event_id is not None:
            return [await service.replay(db, gateway, settings, event_id)]
        return await service.replay_failed(db, gateway, settings)

    try:
        results = _run(work)
    except NotFound as error:
        console.print(f"[red]{escape(error.detail)}[/red]")
        raise typer.Exit(1) from error
    for result in results:
        _print_result(result)
    console.print(f"{len(results)} event(s) replayed")
    if any(r.outcome is ProcessOutcome.FAILED for r in results):
        raise typer.Exit(1)


def _parse_since(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def reconcile(
    since: Annotated[str | None, typer.Option(
        help="ISO date or time (UTC unless given); default 3 days ago. Stripe keeps 30 days.")] = None,
) -> None:
    """Process every event Stripe lists that no webhook delivered; exits 1 if any fails."""
    try:
        start = _parse_since(since) if since else datetime.now(UTC) - timedelta(days=3)
    except ValueError as error:
        raise typer.BadParameter(f"--since {since!r} is not an ISO date") from error

    async def work(db: Database, gateway: PaymentsGateway,
                   settings: Settings) -> service.ReconcileReport:
        return await service.reconcile(db, gateway, settings, since=start)

    report = _run(work)
    for result in report.results:
        _print_result(result)
    for event_id in report.unreadable:
        console.print(f"[red]unreadable[/red] {escape(event_id)}")
    console.print(f"Stripe listed {report.listed} event(s) since {start.isoformat()}; "
                  f"{report.missed} had not been delivered, {report.failed} failed.")
    if report.failed or report.unreadable:
        raise typer.Exit(1)


@app.command()
def process() -> None:
    """Process every due inbox event now (what the processors do), then print the outcomes."""

    async def work(db: Database, gateway: PaymentsGateway, settings: Settings) -> list[ProcessResult]:
        return await inbox.drain(db, gateway, settings, worker=inbox.processor_id("cli"))

    results = _run(work)
    for result in results:
        _print_result(result)
    console.print(f"{len(results)} event(s) processed")


@app.command()
def prune() -> None:
    """Drop stored payloads older than BILLWATCH_WEBHOOK_PAYLOAD_RETENTION_DAYS (rows stay)."""

    async def work(db: Database, _gateway: PaymentsGateway, settings: Settings) -> int:
        return await retention.prune_payloads(db, settings)

    console.print(f"{_run(work)} payload(s) pruned")
