"""The `billwatch` command line: serve, migrate, tokens and users.

Domains add their own command groups (``billwatch audit ...``, ``billwatch webhooks ...``)
by registering a Typer app in :data:`app` below.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from billwatch.accounts import service as accounts
from billwatch.accounts.models import Role
from billwatch.accounts.tokens import mint_token, read_token, revoke_token, revoke_user_tokens
from billwatch.accounts.validation import checked_email, checked_name
from billwatch.audit.cli import audit_app
from billwatch.audit.crypto import keys_for
from billwatch.bootstrap import open_database
from billwatch.db import Database
from billwatch.demo.cli import demo as demo_command
from billwatch.errors import BillwatchError
from billwatch.jobs import cli as jobs_cli
from billwatch.monitoring.cli import monitoring_app
from billwatch.startup import InsecureSettings, checked_settings
from billwatch.webhooks.cli import app as webhooks_app


class _Cli(typer.Typer):
    """The command line, which turns refused settings and refused input into one clear line."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except InsecureSettings as refused:
            sys.stderr.write(f"billwatch: {refused}\n")
            raise SystemExit(2) from None
        except BillwatchError as refused:
            sys.stderr.write(f"billwatch: {refused.detail}\n")
            raise SystemExit(1) from None


app = _Cli(help="billwatch: audited, measured and alerted billing on Stripe.",
           no_args_is_help=True)
users_app = typer.Typer(help="Users of the platform.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.command("demo")(demo_command)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
app.add_typer(jobs_cli.jobs_app, name="jobs")
app.add_typer(monitoring_app, name="monitoring")
console_app = typer.Typer(help="The admin console.", no_args_is_help=True)
app.add_typer(console_app, name="console")
app.command("worker")(jobs_cli.worker)
app.command("beat")(jobs_cli.beat)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")


def run_with_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database, disposing the engine afterwards."""

    async def main() -> T:
        db = open_database(checked_settings())
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (SQLite or PostgreSQL), then make the audit
    partitions of this month and BILLWATCH_AUDIT_PARTITIONS_AHEAD more (PostgreSQL)."""
    from billwatch.audit.partitions import ensure_partitions
    from billwatch.migrations import upgrade

    settings = checked_settings()
    upgrade(settings.database_url, audit_keys=keys_for(settings))
    created = run_with_database(lambda db: ensure_partitions(
        db, ahead=settings.audit_partitions_ahead))
    if created:
        console.print(f"audit partitions created: {', '.join(created)}")
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

    checked_settings()  # refuse here, in one line, before uvicorn imports the app
    with prepared_for_workers(workers):
        if migrate_first:
            migrate()
        uvicorn.run("billwatch.app:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level="warning", access_log=False, proxy_headers=True)


@app.command()
def token(
    email_or_revoke: Annotated[str, typer.Argument(
        metavar="EMAIL | revoke", help="The user to mint a token for, or `revoke`.")],
    jti: Annotated[str | None, typer.Argument(help="With revoke: the jti of the token.")] = None,
    ttl: Annotated[int | None, typer.Option(
        help="Lifetime in seconds (at most BILLWATCH_TOKEN_MAX_TTL_SECONDS).")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", help="With revoke: revoke every token of the user with this e-mail.")] = None,
) -> None:
    """Print a bearer token for EMAIL; `token revoke JTI` or `token revoke --user EMAIL` revokes."""
    if email_or_revoke == "revoke":
        _revoke(jti, user)
        return
    if jti is not None or user is not None:
        raise typer.BadParameter("JTI and --user go with `billwatch token revoke`")
    settings = checked_settings()
    email = checked_email(email_or_revoke)

    async def work(db: Database) -> str | None:
        async with db.unit_of_work() as session:
            found = await accounts.find_user_by_email(session, email)
            return mint_token(found, settings, ttl_seconds=ttl) if found else None

    minted = run_with_database(work)
    if minted is None:
        console.print(f"[red]no user with e-mail {escape(email)}[/red]")
        raise typer.Exit(1)
    claims = read_token(minted, settings)
    errors.print(f"token jti {claims.jti}, expires {claims.expires_at:%Y-%m-%d %H:%M:%S} UTC",
                 highlight=False)
    typer.echo(minted)


def _revoke(jti: str | None, email: str | None) -> None:
    if (jti is None) == (email is None):
        raise typer.BadParameter("give either a JTI or --user EMAIL")
    settings = checked_settings()

    async def work(db: Database) -> str | None:
        async with db.unit_of_work() as session:
            if jti is not None:
                await revoke_token(session, jti, settings)
                return f"token {jti} revoked"
            found = await accounts.find_user_by_email(session, checked_email(email or ""))
            if found is None:
                return None
            cutoff = await revoke_user_tokens(session, found)
            return f"every token of {found.email} issued before {cutoff.isoformat()} revoked"

    done = run_with_database(work)
    if done is None:
        console.print(f"[red]no user with e-mail {escape(email or '')}[/red]")
        raise typer.Exit(1)
    console.print(escape(done), highlight=False)


@users_app.command("create")
def create_user(
    email: str,
    name: Annotated[str, typer.Option(help="Display name.")],
    role: Annotated[Role, typer.Option(help="admin, patient or proxy.")] = Role.PATIENT,
) -> None:
    """Create a user (admins are created this way)."""
    email, name = checked_email(email), checked_name(name)  # before touching the database

    async def work(db: Database) -> str:
        async with db.unit_of_work() as session:
            if await accounts.find_user_by_email(session, email):
                raise typer.BadParameter(f"a user with e-mail {email} exists")
            user = await accounts.create_user(session, email=email, name=name, role=role)
            return str(user.id)

    console.print(run_with_database(work), highlight=False)


@app.command("sync-plans")
def sync_plans() -> None:
    """Create the configured plans in Stripe where they are missing."""
    from billwatch.payments.gateway import PaymentsGateway

    settings = checked_settings()
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

    settings = checked_settings()

    async def work(db: Database) -> str:
        async with db.unit_of_work() as session:
            return await operator_link(session, settings, email=email)

    try:
        token = run_with_database(work)
    except NotFound as error:
        Console(stderr=True).print(f"[red]{escape(error.detail)}[/red]")
        raise typer.Exit(1) from error
    typer.echo(sign_in_link(settings, token))
