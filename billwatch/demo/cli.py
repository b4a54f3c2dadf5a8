"""``billwatch demo``: the command's options; the work is imported only when it runs.

The demo needs development extras (the local Stripe peer, the SMTP sink), so nothing of it is
imported when the ``billwatch`` command line merely starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    patients: Annotated[int, typer.Option(help="Patients in the population.")] = 200,
    proxies: Annotated[int, typer.Option(help="Proxies (billing managers).")] = 40,
    organizations: Annotated[int, typer.Option(help="Organizations (clinics).")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed of the month.")] = 7,
    folder: Annotated[Path, typer.Option(help="Where the demo keeps its database, logs and mail "
                                              "(wiped at the start).")] = Path("var/demo"),
    port: Annotated[int, typer.Option(help="billwatch's port (another free one if taken).")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Customers served at the same time.")] = 8,
    keep_running: Annotated[bool, typer.Option("--keep-running",
                                               help="Afterwards keep everything up until Ctrl-C.")] = False,
) -> None:
    """Run billwatch with a local Stripe through a simulated month, then summarise it."""
    from billwatch.demo.command import run_demo
    from billwatch.demo.environment import Population

    ok = run_demo(population=Population(patients, proxies, organizations, seed), folder=folder,
                  port=port, concurrency=concurrency, keep_running=keep_running)
    if not ok:
        raise typer.Exit(1)
