"""``billwatch audit ...``: verify, checkpoint, rotate-key, archive, keygen.

Every command reads the same settings as the service (database, key ring, HMAC key, checkpoint
and archive folders); ``verify`` exits 0 when the trail is intact and 1 naming the first row
that is not, so it can gate a cron job or a CI step.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.exc import SQLAlchemyError

from billwatch.audit import crypto, verify_runs
from billwatch.audit.anchors import AnchorUnreadable, anchors_for, load_anchor
from billwatch.audit.archive import ArchiveRefused, archive
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.monthly import archive_month
from billwatch.audit.partitions import Month
from billwatch.audit.roles import app_role_grants, sealer_role_grants
from billwatch.audit.rotation import rotate, rows_to_rotate
from billwatch.audit.sealing import SealResult, seal, sealer_database
from billwatch.audit.verify import AnchorCopy, VerifyReport, verify
from billwatch.bootstrap import open_database
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin, current_origin
from billwatch.db import Database, utcnow
from billwatch.startup import checked_settings

audit_app = typer.Typer(help="The audit trail: verify, seal, rotate keys, archive.",
                        no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

CheckpointDir = Annotated[Path | None, typer.Option(
    help="Checkpoint store (default: BILLWATCH_AUDIT_CHECKPOINT_DIR).")]
ArchiveDir = Annotated[Path | None, typer.Option(
    help="Archive folder (default: BILLWATCH_AUDIT_ARCHIVE_DIR).")]


def _settings() -> tuple[Settings, crypto.AuditKeys]:
    settings = checked_settings()
    keys = crypto.keys_for(settings)
    if keys.development:
        errors.print("[yellow]warning: the development audit keys are in use; set "
                     "BILLWATCH_AUDIT_ENCRYPTION_KEYS and BILLWATCH_AUDIT_HMAC_KEY[/yellow]")
    return settings, keys


def _run(settings: Settings, job: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database, as a job whose audit rows say so."""

    async def main() -> T:
        db = open_database(settings)
        try:
            with bound_origin(Origin(job_id=f"cli:audit-{job}:{uuid.uuid4().hex[:12]}")):
                return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@audit_app.command("verify")
def verify_command(
    checkpoint_dir: CheckpointDir = None,
    archive_dir: Annotated[Path | None, typer.Option(
        help="Also re-verify the archived rows in this folder.")] = None,
    anchor: Annotated[list[str] | None, typer.Option(
        help="A checkpoint copy kept off the database host (a file, a saved checkpoint mail, "
        "or the anchor endpoint's URL); the chain must reach its newest checkpoint. "
        "Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Re-compute hashes and chain; exit 1 naming the first row changed/deleted/inserted/moved."""
    settings, keys = _settings()
    store = CheckpointStore(checkpoint_dir or settings.audit_checkpoint_dir)
    token = settings.audit_anchor_token.get_secret_value() if settings.audit_anchor_token else None

    async def work(db: Database) -> VerifyReport:
        started = utcnow()
        try:
            copies = [AnchorCopy(source, await load_anchor(
                source, token=token, http_timeout=settings.audit_anchor_timeout_seconds))
                for source in anchor or []]
        except AnchorUnreadable as unreadable:
            await _record_verify(db, started, None, error=f"anchor unreadable: {unreadable}")
            raise
        report = await verify(db, keys=keys, store=store, archive_dir=archive_dir, anchors=copies)
        await _record_verify(db, started, report)
        return report

    try:
        report = _run(settings, "verify", work)
    except AnchorUnreadable as unreadable:
        errors.print(f"audit trail NOT verified: {unreadable}", markup=False)
        raise typer.Exit(1) from unreadable
    if as_json:
        typer.echo(json.dumps(_report_json(report)))
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return f"uid {os.getuid()}"


async def _record_verify(db: Database, started: datetime, report: VerifyReport | None, *,
                         error: str | None = None) -> None:
    """Leave the run for the console; a database that refuses (a read-only role) only warns."""
    try:
        await verify_runs.record(db, started_at=started, by=_operator(),
                                 job_id=current_origin().job_id, report=report, error=error)
    except SQLAlchemyError as refused:
        errors.print(f"warning: this verify run was not recorded ({type(refused).__name__})",
                     markup=False)


def _report_json(report: VerifyReport) -> dict[str, object]:
    problem = report.problem
    return {"ok": report.ok, "sealed_rows": report.sealed_rows,
            "unsealed_rows": report.unsealed_rows, "archived_rows": report.archived_rows,
            "head_seq": report.head_seq, "checkpoints": report.checkpoints,
            "seconds": round(report.seconds, 3), "rows_per_second": round(report.rows_per_second),
            "notes": report.notes,
            "problem": None if problem is None else {
                "kind": problem.kind, "message": problem.message, "seq": problem.seq,
                "row_id": problem.row_id}}


def _print_report(report: VerifyReport) -> None:
    console.print(f"sealed rows {report.sealed_rows:,} (head seq {report.head_seq:,}), "
                  f"unsealed {report.unsealed_rows:,}, archived {report.archived_rows:,}, "
                  f"checkpoints {report.checkpoints:,}; {report.seconds:.2f}s, "
                  f"{report.rows_per_second:,.0f} rows/s")
    for note in report.notes:
        console.print(f"note: {escape(note)}")
    if report.problem is None:
        console.print("[green]audit trail intact[/green]")
    else:
        errors.print(f"[red]audit trail BROKEN ({report.problem.kind}): "
                     f"{escape(report.problem.message)}[/red]")


@audit_app.command("checkpoint")
def checkpoint_command(checkpoint_dir: CheckpointDir = None) -> None:
    """Seal the rows written since the last seal and write a signed checkpoint."""
    settings, keys = _settings()
    store = CheckpointStore(checkpoint_dir or settings.audit_checkpoint_dir)

    async def work(db: Database) -> SealResult:
        sealer = sealer_database(db, settings)
        try:
            return await seal(sealer, keys=keys, store=store, anchors=anchors_for(settings))
        finally:
            if sealer is not db:
                await sealer.dispose()

    result = _run(settings, "checkpoint", work)
    console.print(f"sealed {result.sealed:,} rows; head seq {result.checkpoint.last_seq:,}; "
                  f"checkpoint {escape(str(result.path))}")


@audit_app.command("rotate-key")
def rotate_key_command(
    batch_size: Annotated[int, typer.Option(min=1, max=50_000,
                                            help="Rows re-encrypted per transaction.")] = 1000,
) -> None:
    """Re-encrypt metadata under the first key of BILLWATCH_AUDIT_ENCRYPTION_KEYS."""
    settings, keys = _settings()

    async def work(db: Database) -> int:
        total = await rows_to_rotate(db, keys)
        with Progress(TextColumn("[bold]re-encrypting[/bold]"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task("rotate", total=total)
            result = await rotate(db, keys=keys, batch=batch_size,
                                  progress=lambda n: progress.advance(task, n))
        return result.rotated

    rotated = _run(settings, "rotate-key", work)
    console.print(f"{rotated:,} rows now under key {keys.ring.primary_id!r}; the chain is "
                  "unchanged (hashes cover plaintext). Older keys may leave the ring once no "
                  "archive needs them.")


def _month(value: str | None) -> Month | None:
    if value is None:
        return None
    try:
        return Month.parse(value)
    except ValueError as error:
        raise typer.BadParameter("expected YYYY-MM, e.g. 2026-03") from error


@audit_app.command("archive")
def archive_command(
    before: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%d"], help="Archive rows before this UTC date "
        "(default: today minus BILLWATCH_AUDIT_RETENTION_DAYS); never within 90 days.")] = None,
    month: Annotated[str | None, typer.Option(
        help="Archive this whole sealed month (YYYY-MM, UTC) instead; on PostgreSQL its "
        "partition is detached and dropped.")] = None,
    archive_dir: ArchiveDir = None,
    checkpoint_dir: CheckpointDir = None,
) -> None:
    """Move rows older than the retention window to a verifiable gzip JSONL archive."""
    chosen = _month(month)
    if chosen is not None and before is not None:
        raise typer.BadParameter("give --before or --month, not both")
    settings, keys = _settings()
    store = CheckpointStore(checkpoint_dir or settings.audit_checkpoint_dir)
    directory = archive_dir or settings.audit_archive_dir
    verify_with = f"; verify with --archive-dir {escape(str(directory))}"
    if chosen is not None:
        done = _archived(settings, lambda db: archive_month(
            db, keys=keys, store=store, directory=directory, month=chosen))
        if done is None:
            console.print(f"no rows of {chosen} to archive")
            return
        result = done.archive
        dropped = f"; partition {done.partition_dropped} dropped" if done.partition_dropped else ""
        console.print(f"archived {chosen}: {done.month_rows:,} rows and {done.strays:,} of other "
                      f"months sealed among them (seq {result.first_seq:,}..{result.last_seq:,}) "
                      f"to {escape(str(result.path))}{dropped}{verify_with}")
        return
    cutoff = (before.replace(tzinfo=UTC) if before is not None
              else datetime.now(UTC) - timedelta(days=settings.audit_retention_days))
    archived = _archived(settings, lambda db: archive(
        db, keys=keys, store=store, directory=directory, before=cutoff))
    if archived is None:
        console.print(f"nothing before {cutoff:%Y-%m-%d} to archive")
        return
    console.print(f"archived {archived.rows:,} rows (seq {archived.first_seq:,}.."
                  f"{archived.last_seq:,}) to {escape(str(archived.path))}{verify_with}")


def _archived(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run one archive; a refusal is printed with its reason and exits 1, for either mode."""
    try:
        return _run(settings, "archive", work)
    except ArchiveRefused as refused:
        errors.print(f"[red]{escape(str(refused))}[/red]")
        raise typer.Exit(1) from refused


@audit_app.command("keygen")
def keygen_command(
    kid: Annotated[str | None, typer.Option(
        help="Id of the new key (letters, digits, _ . -); default k and today's UTC date.")] = None,
) -> None:
    """Print a new encryption key entry to put first in BILLWATCH_AUDIT_ENCRYPTION_KEYS."""
    typer.echo(crypto.generate_key_entry(kid or f"k{datetime.now(UTC):%Y%m%d}"))


@audit_app.command("grants")
def grants_command(
    role: Annotated[str, typer.Option(help="The role the service connects as.")] = "billwatch_app",
    sealer_role: Annotated[str, typer.Option(
        help="The role the sealing job connects as (BILLWATCH_AUDIT_SEALER_DATABASE_URL).")] =
        "billwatch_sealer",
    schema: Annotated[str, typer.Option(help="Schema holding billwatch's tables.")] = "public",
) -> None:
    """Print PostgreSQL GRANTs: a service role that may only INSERT and SELECT audit rows, and a
    sealer role that may also INSERT seals and checkpoints (run them as the owner)."""
    try:
        sections = (("service role: INSERT and SELECT audit rows, nothing more", app_role_grants(
            role, schema)), ("sealer role: reads the trail, INSERTs seals and checkpoints only",
                             sealer_role_grants(sealer_role, schema)))
    except ValueError as error:
        errors.print(str(error), markup=False)
        raise typer.Exit(2) from error
    for title, statements in sections:
        typer.echo(f"-- {title}")
        for statement in statements:
            typer.echo(f"{statement};")
