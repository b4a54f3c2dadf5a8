"""Alembic migrations, shipped inside the package so `billwatch migrate` works wherever it runs.

Domains may add their own branch (``down_revision`` the foundation, a ``branch_labels`` of
their own); ``billwatch migrate`` upgrades every head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config

if TYPE_CHECKING:
    from billwatch.audit.crypto import AuditKeys

MIGRATIONS_DIR = Path(__file__).parent
AUDIT_KEYS = "billwatch_audit_keys"
"""The config attribute under which a migration that seals or opens audit rows finds its keys."""


def alembic_config(database_url: str, *, audit_keys: AuditKeys | None = None) -> Config:
    """The migrations of ``database_url``; ``audit_keys`` for those that touch audit rows (the
    ``0200_audit`` one encrypts rows written before it), else the configured keys are used."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if audit_keys is not None:
        config.attributes[AUDIT_KEYS] = audit_keys
    return config


def upgrade(database_url: str, revision: str = "heads", *,
            audit_keys: AuditKeys | None = None) -> None:
    """Bring the database to the newest schema (runs its own event loop)."""
    command.upgrade(alembic_config(database_url, audit_keys=audit_keys), revision)
