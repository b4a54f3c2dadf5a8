"""``billwatch monitoring``: the Prometheus rules, rendered from the app's own thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from billwatch.config import get_settings
from billwatch.monitoring import prometheus_rules

monitoring_app = typer.Typer(help="Prometheus rules from billwatch's alert thresholds.",
                             no_args_is_help=True)


@monitoring_app.command("render-rules")
def render_rules(
    output: Annotated[Path, typer.Option(help="Where the rules file goes ('-' prints it).")] = Path(
        prometheus_rules.RULES_PATH),
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing; exit 1 when the file differs from the rendering.")] = False,
    defaults: Annotated[bool, typer.Option(
        "--defaults", help="Render the shipped defaults, ignoring BILLWATCH_* settings "
        "(how the repository's file is made).")] = False,
) -> None:
    """Write the Prometheus rules for this installation's settings (thresholds, backlog age)."""
    settings = prometheus_rules.shipped_settings() if defaults else get_settings()
    text = prometheus_rules.render(settings)
    if str(output) == "-":
        typer.echo(text, nl=False)
        return
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else None
        if current != text:
            typer.echo(f"{output} is stale: run billwatch monitoring render-rules"
                       f"{' --defaults' if defaults else ''}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output} is current")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")
