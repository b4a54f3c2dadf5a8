"""Setting the installation's recorded first moment, as its migration (or first run) would."""

from __future__ import annotations

from datetime import datetime

from billwatch.db import Database
from billwatch.jobs.models import Installation


async def installed(db: Database, at: datetime) -> None:
    """Record that this installation was set up at ``at``."""
    async with db.unit_of_work() as session:
        await session.merge(Installation(id=1, installed_at=at))
