"""The demo run: start everything, run a simulated month, print what it left behind.

One command, nothing to configure: a local Stripe peer, billwatch on an embedded SQLite file, an
SMTP sink for alert e-mails, all on loopback, all under one folder (``var/demo`` by default,
wiped at the start of each run). Without ``--keep-running`` every process is stopped at the end.
SIGTERM and SIGHUP stop it the way Ctrl-C does, so a closed terminal or a ``kill`` leaves no
child process behind either.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

from billwatch.bootstrap import open_database
from billwatch.demo import summary as report
from billwatch.demo.api import BillwatchApi
from billwatch.demo.environment import DemoEnvironment, Population
from billwatch.demo.mailsink import MailSink
from billwatch.demo.month import Month
from billwatch.demo.peer import StripePeer
from billwatch.demo.population import seed
from billwatch.demo.stack import Service, free_port, start_billwatch, start_localstripe
from billwatch.demo.stripe_side import PEER_EVENT_TYPES, StripeSide
from billwatch.demo.waiting import wait_for_alerts, wait_for_peer_events
from billwatch.logging import configure_logging

console = Console()


def run_demo(*, population: Population, folder: Path, port: int, concurrency: int,
             keep_running: bool) -> bool:
    """The whole demo; True when the month ran cleanly and the audit chain verified."""
    configure_logging("WARNING", json=False)  # the progress bars are this process's output
    folder = folder.resolve()
    _fresh(folder)
    env = DemoEnvironment(folder, free_port(port), free_port(8420), free_port(8025))
    started = time.monotonic()
    with _stop_on_termination() as received:
        try:
            with ExitStack() as stack:
                sink = MailSink(env.mail_folder, env.smtp_port)
                sink.start()
                stack.callback(sink.stop)
                stack.enter_context(_services(env))
                result = asyncio.run(_run(env, population, concurrency, started))
                report.render(result, console)
                if keep_running:
                    _serve_until_interrupted(env)
        except KeyboardInterrupt:
            if not received:
                raise  # Ctrl-C: as before
            console.print(f"stopped by {signal.Signals(received[0]).name}; every process is down")
            raise SystemExit(128 + received[0]) from None
    return not result.problems and result.verify.ok


@contextmanager
def _stop_on_termination() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP act as Ctrl-C: the SIGINT handler of the moment runs (asyncio's, which
    cancels the month, or Python's, which raises KeyboardInterrupt), so the stack unwinds and
    stops every child. Only the first one acts: a second would interrupt the stopping itself,
    which is already bounded (SIGTERM, then SIGKILL)."""
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            return
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve_until_interrupted(env: DemoEnvironment) -> None:
    """Keep billwatch, the Stripe peer and the mail sink up until Ctrl-C (or SIGTERM, SIGHUP)."""
    console.print(f"[bold]billwatch keeps running on {env.base_url}[/bold] with the Stripe peer on "
                  f"{env.stripe_url}; new alert e-mails still land in {report.shown(env.mail_folder)}. "
                  "Press Ctrl-C to stop everything.")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        console.print("stopping")


def _fresh(folder: Path) -> None:
    """Start from nothing: a previous run's database, peer state and mail are removed."""
    for name in ("billwatch.db", "billwatch.db-wal", "billwatch.db-shm"):
        (folder / name).unlink(missing_ok=True)
    for name in ("mail", "localstripe", "checkpoints", "archive"):
        shutil.rmtree(folder / name, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


@contextmanager
def _services(env: DemoEnvironment) -> Iterator[list[Service]]:
    """The Stripe peer, then the migrated and seeded database, then billwatch."""
    services: list[Service] = []
    try:
        with console.status("Starting the local Stripe peer and billwatch..."):
            start_localstripe(env.folder, env.stripe_port, services)
            from billwatch.migrations import upgrade

            upgrade(env.settings().database_url)
            start_billwatch(env.folder, env.billwatch_port, env.server_env(), services)
        yield services
    finally:
        for service in reversed(services):
            service.stop()


async def _run(env: DemoEnvironment, population: Population, concurrency: int,
               started: float) -> report.Summary:
    settings = env.settings()
    db = open_database(settings)
    peer = StripePeer(env.stripe_url, env.stripe_api_key)
    api = BillwatchApi(env.base_url)
    try:
        from billwatch.payments.gateway import PaymentsGateway

        await PaymentsGateway(settings).ensure_catalogue(settings.plans)
        await peer.register_webhook("billwatch", url=f"{env.base_url}/webhooks/stripe",
                                    secret=env.webhook_secret, events=PEER_EVENT_TYPES)
        cast = await seed(db, settings, population)
        side = StripeSide(peer, api, db, env.webhook_secret, env.base_url)
        with _progress() as progress:
            month = Month(api, side, cast, settings, progress, concurrency, population.seed)
            await month.run()
            peer_events = await wait_for_peer_events(db, side.peer_events_expected, progress)
            await wait_for_alerts(db, progress)
            daily = report.run_command(env, "jobs", "daily-metrics", "--date", _today())
        verify = report.seal_and_verify(env)
        sign_in = report.run_command(env, "console", "link", cast.admins[0].email)
        figures, source = await report.key_figures(db, settings, env.base_url, from_job=daily.ok)
        return report.Summary(
            elapsed_seconds=time.monotonic() - started, tally=month.tally, delivered=side.delivered,
            refused=side.refused, peer_events=peer_events,
            audit_rows=await report.audit_counts(db), verify=verify, figures=figures,
            figures_source=source, alerts=await report.alert_counts(db),
            mail_folder=env.mail_folder, base_url=env.base_url,
            mails=sorted(p.name for p in env.mail_folder.glob("*.eml")),
            admin_token=cast.admins[0].token,
            console_link=sign_in.output if sign_in.ok else f"unavailable: {sign_in.output[-200:]}",
            problems=month.problems + ([] if daily.ok else [f"daily metrics: {daily.output[-300:]}"]))
    finally:
        await api.close()
        await peer.close()
        await db.dispose()


def _today() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).date().isoformat()


def _progress() -> Progress:
    return Progress(SpinnerColumn(), "[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console)
