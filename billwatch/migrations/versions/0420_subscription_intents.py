"""subscription intents: pending checkouts, cancellation intents, one live subscription per owner

Revision ID: 0420_subscription_intents
Revises: 0001_foundation

Checkout and cancel become intent, Stripe call, settlement: a checkout row exists (``pending``)
before Stripe is asked, so its Stripe ids and URL become nullable and ``pending``/``failed``
join its statuses; a cancellation intent gets a table of its own. Two partial unique indexes
(PostgreSQL and SQLite both have them) let the database refuse a second open checkout and a
second live, unflagged subscription for one owner.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billwatch.db

revision: str = "0420_subscription_intents"
down_revision: str | Sequence[str] | None = "0001_foundation"
branch_labels: str | Sequence[str] | None = ("subscriptions",)
depends_on: str | Sequence[str] | None = None

OLD_CHECKOUT_STATUSES = ("open", "complete", "expired")
NEW_CHECKOUT_STATUSES = ("pending", "open", "complete", "expired", "failed")
LIVE_WHERE = ("duplicate_of_id IS NULL AND status IN "
              "('active', 'trialing', 'past_due', 'incomplete', 'unpaid', 'paused')")
OPEN_WHERE = "status IN ('pending', 'open')"


def _enum(values: Sequence[str], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=40)


def _checkout_table(statuses: Sequence[str], *, nullable_refs: bool) -> sa.Table:
    """checkout_sessions as 0001 (or this revision) defines it, for SQLite's table rebuild.

    Given explicitly because SQLite reflection does not carry the enum CHECK constraints.
    """
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("owner_type", _enum(("patient", "organization"), "checkout_owner_type"),
                  nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("plan_code", sa.String(length=40), nullable=False),
        sa.Column("status", _enum(statuses, "checkout_status"), nullable=False),
        sa.Column("stripe_session_id", sa.String(length=255), nullable=nullable_refs),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=nullable_refs),
        sa.Column("url", sa.Text(), nullable=nullable_refs),
        sa.Column("created_by_user_id", sa.Uuid(), nullable=False),
        sa.Column("manager_assignment_id", sa.Uuid(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["users.id"],
                                name="fk_checkout_sessions_created_by_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_checkout_sessions"),
        sa.UniqueConstraint("idempotency_key", name="uq_checkout_sessions_idempotency_key"),
        sa.UniqueConstraint("stripe_session_id", name="uq_checkout_sessions_stripe_session_id"),
    ]
    return sa.Table("checkout_sessions", sa.MetaData(naming_convention=billwatch.db.NAMING_CONVENTION),
                    *columns)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.batch_alter_table("checkout_sessions", recreate="always",
                                  copy_from=_checkout_table(OLD_CHECKOUT_STATUSES,
                                                            nullable_refs=False)) as batch:
            batch.alter_column("status", type_=_enum(NEW_CHECKOUT_STATUSES, "checkout_status"),
                               existing_type=_enum(OLD_CHECKOUT_STATUSES, "checkout_status"),
                               existing_nullable=False)
            for name in ("stripe_session_id", "stripe_customer_id", "url"):
                batch.alter_column(name, nullable=True)
    else:
        op.drop_constraint(op.f("ck_checkout_sessions_checkout_status"), "checkout_sessions",
                           type_="check")
        op.create_check_constraint("checkout_status", "checkout_sessions",
                                   sa.column("status").in_(NEW_CHECKOUT_STATUSES))
        for name in ("stripe_session_id", "stripe_customer_id", "url"):
            op.alter_column("checkout_sessions", name, nullable=True)
    op.add_column("checkout_sessions",
                  sa.Column("expires_at", billwatch.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column("checkout_sessions",
                  sa.Column("settled_at", billwatch.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column("checkout_sessions", sa.Column("error", sa.Text(), nullable=True))
    op.add_column("checkout_sessions", sa.Column("success_url", sa.Text(), nullable=True))
    op.add_column("checkout_sessions", sa.Column("cancel_url", sa.Text(), nullable=True))
    op.create_index("uq_checkout_sessions_one_open_per_owner", "checkout_sessions",
                    ["owner_type", "owner_id"], unique=True,
                    sqlite_where=sa.text(OPEN_WHERE), postgresql_where=sa.text(OPEN_WHERE))

    op.add_column("subscriptions", sa.Column("duplicate_of_id", sa.Uuid(), nullable=True))
    op.create_index("uq_subscriptions_one_live_per_owner", "subscriptions",
                    ["owner_type", "owner_id"], unique=True,
                    sqlite_where=sa.text(LIVE_WHERE), postgresql_where=sa.text(LIVE_WHERE))

    op.create_table(
        "subscription_cancellations",
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("mode", _enum(("period_end", "immediately"), "cancel_mode"), nullable=False),
        sa.Column("status", _enum(("pending", "succeeded", "failed"), "cancel_status"),
                  nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("actor_user_id", sa.Uuid(), nullable=False),
        sa.Column("actor_role", _enum(("admin", "patient", "proxy"), "cancel_actor_role"),
                  nullable=False),
        sa.Column("manager_assignment_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("settled_at", billwatch.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscriptions.id"],
                                name=op.f("fk_subscription_cancellations_subscription_id_subscriptions")),
        sa.ForeignKeyConstraint(["actor_user_id"], ["users.id"],
                                name=op.f("fk_subscription_cancellations_actor_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_cancellations")),
        sa.UniqueConstraint("idempotency_key",
                            name=op.f("uq_subscription_cancellations_idempotency_key")),
    )
    op.create_index("uq_subscription_cancellations_one_pending", "subscription_cancellations",
                    ["subscription_id"], unique=True, sqlite_where=sa.text("status = 'pending'"),
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_subscription_cancellations_status_time", "subscription_cancellations",
                    ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_subscription_cancellations_status_time", "subscription_cancellations")
    op.drop_index("uq_subscription_cancellations_one_pending", "subscription_cancellations")
    op.drop_table("subscription_cancellations")
    op.drop_index("uq_subscriptions_one_live_per_owner", "subscriptions")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("duplicate_of_id")
    op.drop_index("uq_checkout_sessions_one_open_per_owner", "checkout_sessions")
    op.execute("DELETE FROM checkout_sessions WHERE status IN ('pending', 'failed')")
    with op.batch_alter_table("checkout_sessions") as batch:
        for name in ("expires_at", "settled_at", "error", "success_url", "cancel_url"):
            batch.drop_column(name)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("checkout_sessions", recreate="always",
                                  copy_from=_checkout_table(NEW_CHECKOUT_STATUSES,
                                                            nullable_refs=True)) as batch:
            batch.alter_column("status", type_=_enum(OLD_CHECKOUT_STATUSES, "checkout_status"),
                               existing_type=_enum(NEW_CHECKOUT_STATUSES, "checkout_status"),
                               existing_nullable=False)
            for name in ("stripe_session_id", "stripe_customer_id", "url"):
                batch.alter_column(name, nullable=False)
    else:
        op.drop_constraint(op.f("ck_checkout_sessions_checkout_status"), "checkout_sessions",
                           type_="check")
        op.create_check_constraint("checkout_status", "checkout_sessions",
                                   sa.column("status").in_(OLD_CHECKOUT_STATUSES))
        for name in ("stripe_session_id", "stripe_customer_id", "url"):
            op.alter_column("checkout_sessions", name, nullable=False)
