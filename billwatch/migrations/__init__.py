"""Alembic migrations, shipped inside the package so `billwatch migrate` works wherever it runs.

Domains may add their own branch (``down_revision`` the foundation, a ``branch_labels`` of
their own); ``billwatch migrate`` upgrades every head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Bring the database to the newest schema (runs its own event loop)."""
    command.upgrade(alembic_config(database_url), revision)
