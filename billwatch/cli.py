"""The `billwatch` command line: serve, migrate, tokens and users.

Domains add their own command groups (``billwatch audit ...``, ``billwatch webhooks ...``)
by registering a Typer app in :data:`app` below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from billwatch.accounts import service as accounts
from billwatch.accounts.models import Role
from billwatch.accounts.tokens import mint_token
from billwatch.audit.cli import audit_app
from billwatch.config import get_settings
from billwatch.db import Database
from billwatch.demo.cli import demo as demo_command
from billwatch.jobs import cli as jobs_cli
from billwatch.webhooks.cli import app as webhooks_app

app = typer.Typer(help="billwatch: audited, measured and alerted billing on Stripe.",
                  no_args_is_help=True)
users_app = typer.Typer(help="Users of the platform.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.command("demo")(demo_command)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
app.add_typer(jobs_cli.jobs_app, name="jobs")
console_app = typer.Typer(help="The admin console.", no_args_is_help=True)
app.add_typer(console_app, name="console")
app.command("worker")(jobs_cli.worker)
app.command("beat")(jobs_cli.beat)
console = Console()
T = TypeVar("T")


def run_with_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database, disposing the engine afterwards."""

    async def main() -> T:
        db = Database(get_settings().database_url)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (SQLite or PostgreSQL)."""
    from billwatch.migrations import upgrade

    upgrade(get_settings().database_url)
    console.print("[green]database is at the newest schema[/green]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate",
                                                help="Upgrade the schema first.")] = True,
) -> None:
    """Serve the HTTP API (several workers share their metrics through PROMETHEUS_MULTIPROC_DIR)."""
    import uvicorn

    from billwatch.metrics.multiproc import prepared_for_workers

    with prepared_for_workers(workers):
        if migrate_first:
            migrate()
        uvicorn.run("billwatch.app:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level="warning", access_log=False, proxy_headers=True)


@app.command()
def token(
    email: str,
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
) -> None:
    """Print a bearer token for the user with EMAIL."""
    settings = get_settings()

    async def work(db: Database) -> str | None:
        async with db.unit_of_work() as session:
            user = await accounts.find_user_by_email(session, email)
            return mint_token(user, settings, ttl_seconds=ttl) if user else None

    minted = run_with_database(work)
    if minted is None:
        console.print(f"[red]no user with e-mail {email}[/red]")
        raise typer.Exit(1)
    typer.echo(minted)


@users_app.command("create")
def create_user(
    email: str,
    name: Annotated[str, typer.Option(help="Display name.")],
    role: Annotated[Role, typer.Option(help="admin, patient or proxy.")] = Role.PATIENT,
) -> None:
    """Create a user (admins are created this way)."""

    async def work(db: Database) -> str:
        async with db.unit_of_work() as session:
            if await accounts.find_user_by_email(session, email):
                raise typer.BadParameter(f"a user with e-mail {email} exists")
            user = await accounts.create_user(session, email=email, name=name, role=role)
            return str(user.id)

    console.print(run_with_database(work))


@app.command("sync-plans")
def sync_plans() -> None:
    """Create the configured plans in Stripe where they are missing."""
    from billwatch.payments.gateway import PaymentsGateway

    settings = get_settings()
    asyncio.run(PaymentsGateway(settings).ensure_catalogue(settings.plans))
    console.print(f"[green]{len(settings.plans)} plans present in Stripe[/green]")


if __name__ == "__main__":
    app()


@console_app.command("link")
def console_link(email: Annotated[str, typer.Argument(help="An admin's e-mail address.")]) -> None:
    """Print a single-use console sign-in link for an admin (valid for the link lifetime)."""
    from billwatch.console.auth import operator_link
    from billwatch.console.mail import sign_in_link
    from billwatch.errors import NotFound

    settings = get_settings()

    async def work(db: Database) -> str:
        async with db.unit_of_work() as session:
            return await operator_link(session, settings, email=email)

    try:
        token = run_with_database(work)
    except NotFound as error:
        Console(stderr=True).print(f"[red]{escape(error.detail)}[/red]")
        raise typer.Exit(1) from error
    typer.echo(sign_in_link(settings, token))
