"""What the month left behind, read back the way an operator would, and printed as one page.

The audit rows are counted in the database; the chain is checked and the daily figures are
computed by billwatch's own commands (``billwatch audit verify``, ``billwatch jobs
daily-metrics``) run as an operator runs them; alerts come from the alert ledger, and their
e-mails from the folder the local SMTP sink wrote them to.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import func, select

from billwatch.alerts.models import Alert
from billwatch.audit.models import AuditLog
from billwatch.billing import revenue
from billwatch.billing.models import (
    ACTIVE_SUBSCRIPTION_STATUSES,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
    Transaction,
    TransactionKind,
    TransactionStatus,
)
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.demo.environment import DemoEnvironment
from billwatch.demo.stack import executable
from billwatch.jobs.models import DailyBillingMetrics


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    output: str


@dataclass
class Summary:
    elapsed_seconds: float
    tally: Counter[str]
    delivered: Counter[str]
    refused: Counter[str]
    peer_events: Counter[str]
    audit_rows: list[tuple[str, str, int]]
    verify: CommandResult
    figures: dict[str, str]
    figures_source: str
    alerts: list[tuple[str, str, str, int]]
    mail_folder: Path
    mails: list[str]
    base_url: str
    admin_token: str
    console_link: str
    """A single-use sign-in link to the admin console for the first demo admin."""
    problems: list[str] = field(default_factory=list)


def run_command(env: DemoEnvironment, *args: str, timeout: float = 120) -> CommandResult:
    """A ``billwatch`` command against the demo's database, as an operator would type it."""
    done = subprocess.run([executable("billwatch"), *args], cwd=env.folder, capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**_base_env(), **env.server_env(), "COLUMNS": "100"})
    text = (done.stdout + done.stderr).strip()
    return CommandResult(done.returncode == 0, text)


def seal_and_verify(env: DemoEnvironment) -> CommandResult:
    """``billwatch audit checkpoint`` (what the hourly job does), then ``billwatch audit verify``."""
    sealed = run_command(env, "audit", "checkpoint")
    checked = run_command(env, "audit", "verify")
    return CommandResult(sealed.ok and checked.ok,
                         f"$ billwatch audit checkpoint\n{sealed.output}\n"
                         f"$ billwatch audit verify\n{checked.output}")


async def key_figures(db: Database, settings: Settings, base_url: str, *,
                      from_job: bool) -> tuple[dict[str, str], str]:
    """The job's figures of today (or the table's, if the job failed), churn and live gauges."""
    figures = await daily_figures(db) if from_job else None
    source = "daily metrics job" if figures else "subscriptions table"
    return {**(figures or await database_figures(db, settings)), **await month_churn(db),
            **await live_gauges(base_url)}, source


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}


async def audit_counts(db: Database) -> list[tuple[str, str, int]]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(AuditLog.event_type, AuditLog.outcome, func.count())
            .group_by(AuditLog.event_type, AuditLog.outcome).order_by(func.count().desc()))
        return [(event, str(outcome), int(n)) for event, outcome, n in rows]


async def alert_counts(db: Database) -> list[tuple[str, str, str, int]]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(Alert.kind, Alert.severity, Alert.status, func.count())
            .group_by(Alert.kind, Alert.severity, Alert.status).order_by(Alert.kind))
        return [(kind, str(severity), str(status), int(n)) for kind, severity, status, n in rows]


async def daily_figures(db: Database) -> dict[str, str] | None:
    """Today's row of the daily metrics job, formatted; None if the job left none."""
    today = datetime.now(UTC).date()
    async with db.sessionmaker() as session:
        row = await session.get(DailyBillingMetrics, today)
    if row is None:
        return None
    return {
        "MRR": _money(row.mrr_cents, row.currency),
        "active subscriptions": str(row.active_subscriptions),
        "paying customers": str(row.paying_customers),
        "ARPU": _money(row.arpu_cents, row.currency),
        "new / cancelled today": f"{row.new_subscriptions} / {row.cancelled_subscriptions}",
        "gross revenue today": _money(row.gross_revenue_cents, row.currency),
        "refunds today": f"{row.refunds_count} ({_money(row.refunds_cents, row.currency)})",
        "payment success rate": _percent(row.payment_success_rate),
        f"customer churn ({row.churn_window_days} d)": _percent(row.customer_churn_rate),
        f"revenue churn ({row.churn_window_days} d)": _percent(row.revenue_churn_rate),
    }


async def database_figures(db: Database, settings: Settings) -> dict[str, str]:
    """MRR and active subscriptions straight from the subscriptions table (no job needed),
    counted as the live gauges count them."""
    async with db.engine.connect() as conn:
        mrr = sum(total for total, _ in (await revenue.mrr_by_owner_type(
            conn, settings.plans, utcnow())).values())
        active = int(await conn.scalar(select(func.count()).select_from(Subscription).where(
            Subscription.status.in_(ACTIVE_SUBSCRIPTION_STATUSES))) or 0)
        ended = int(await conn.scalar(select(func.count()).select_from(Subscription).where(
            Subscription.status == SubscriptionStatus.CANCELED)) or 0)
    currency = settings.plans[0].currency if settings.plans else "usd"
    return {"MRR": _money(mrr, currency), "active subscriptions": str(active),
            "subscriptions ended this month": str(ended),
            "churn (ended / ever started)": _percent(ended / (active + ended) if active + ended else None)}


async def month_churn(db: Database) -> dict[str, str]:
    """Customers who paid during the simulated month and hold no live subscription at its end.

    The daily job's churn counts customers lost *since the start of its window* (30 days back),
    and a demo's customers all joined inside the window; this figure is the demo's own, labelled
    as such: lost paying customers / paying customers of the month.
    """
    async with db.sessionmaker() as session:
        paid = set((await session.execute(select(Transaction.owner_type, Transaction.owner_id).where(
            Transaction.kind == TransactionKind.PAYMENT,
            Transaction.status == TransactionStatus.SUCCEEDED).distinct())).tuples().all())
        keeping = set((await session.execute(select(Subscription.owner_type, Subscription.owner_id).where(
            Subscription.status.in_(ACTIVE_SUBSCRIPTION_STATUSES),
            Subscription.source == SubscriptionSource.STRIPE).distinct())).tuples().all())
    lost = len(paid - keeping)
    return {"paying customers lost this month (demo's own figure)":
            f"{lost} of {len(paid)} ({_percent(lost / len(paid) if paid else None)})"}


async def live_gauges(base_url: str) -> dict[str, str]:
    """The database-backed gauges as Prometheus scrapes them from ``/metrics`` right now."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        text = (await http.get("/metrics")).text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in {"billing_mrr_cents", "billing_active_subscriptions",
                           "billing_proxy_managed_subscriptions"}:
            sums[family.name] = sum(sample.value for sample in family.samples)
    return {
        "MRR, live gauge (/metrics)": _money(int(sums.get("billing_mrr_cents", 0)), "usd"),
        "active subscriptions, live gauge (/metrics)":
            str(int(sums.get("billing_active_subscriptions", 0))),
        "proxy-managed subscriptions (/metrics)":
            str(int(sums.get("billing_proxy_managed_subscriptions", 0))),
    }


def shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (shorter to read)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _money(cents: int | None, currency: str) -> str:
    return "n/a" if cents is None else f"{cents / 100:,.2f} {currency.upper()}"


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f} %"


def render(summary: Summary, console: Console) -> None:
    """Print the one-page summary."""
    console.print(Panel(Group(_month_table(summary), _webhook_table(summary)),
                        title=f"The simulated month ({summary.elapsed_seconds:.0f} s)"))
    console.print(_audit_table(summary))
    console.print(Panel(summary.verify.output[-1200:] or "(no output)",
                        title="billwatch audit verify: " + ("[green]intact[/green]" if summary.verify.ok
                                                             else "[red]FAILED[/red]")))
    console.print(_pairs_table(f"Key metrics ({summary.figures_source})", summary.figures))
    console.print(_alert_table(summary))
    console.print(_open_table(summary))
    console.print("Admin token (valid 7 days):", summary.admin_token, soft_wrap=True)
    console.print("Console sign-in link (single use, 15 minutes):", summary.console_link,
                  soft_wrap=True)
    if summary.problems:
        console.print(Panel("\n".join(summary.problems[:10]), title=f"[red]{len(summary.problems)} "
                            "unexpected answers[/red]"))


def _month_table(summary: Summary) -> Table:
    table = Table("what happened", "count", title="Operations through the API", title_justify="left")
    for label, count in sorted(summary.tally.items()):
        table.add_row(label, str(count))
    return table


def _webhook_table(summary: Summary) -> Table:
    table = Table("Stripe event", "sent by", "accepted", "refused",
                  title="Signed webhooks delivered to billwatch", title_justify="left")
    for event_type in sorted(set(summary.delivered) | set(summary.refused)):
        table.add_row(event_type, "demo (current shape)", str(summary.delivered[event_type]),
                      str(summary.refused[event_type]))
    for event_type, count in sorted(summary.peer_events.items()):
        table.add_row(event_type, "Stripe peer (older shape)", str(count), "")
    return table


def _audit_table(summary: Summary) -> Table:
    total = sum(n for *_, n in summary.audit_rows)
    table = Table("event type", "outcome", "rows", title=f"Audit rows by event type ({total} in all)",
                  title_justify="left")
    for event, outcome, n in summary.audit_rows:
        table.add_row(event, outcome if outcome == "success" else f"[yellow]{outcome}[/yellow]", str(n))
    return table


def _pairs_table(title: str, pairs: dict[str, Any]) -> Table:
    table = Table(show_header=False, title=title, title_justify="left")
    for key, value in pairs.items():
        table.add_row(key, str(value))
    return table


def _alert_table(summary: Summary) -> Table:
    table = Table("alert", "severity", "status", "count",
                  title=f"Alerts raised ({len(summary.mails)} e-mails in {shown(summary.mail_folder)})",
                  title_justify="left")
    for kind, severity, status, n in summary.alerts:
        table.add_row(kind, severity, status, str(n))
    return table


def _open_table(summary: Summary) -> Table:
    base = summary.base_url
    return _pairs_table("Open", {
        "console": f"{base}/console (sign in with the link below)",
        "API docs": f"{base}/docs",
        "metrics": f"{base}/metrics",
        "audit trail": f"{base}/admin/audit-logs?limit=20",
        "alerts": f"{base}/admin/alerts",
        "try": f"TOKEN=<admin token below>; curl -H \"Authorization: Bearer $TOKEN\" "
               f"'{base}/admin/audit-logs?limit=5'",
    })
