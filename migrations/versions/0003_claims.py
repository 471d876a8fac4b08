"""Claims and the shared rate budget: several worker processes crawling one run (PostgreSQL).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00

- `crawl_targets` gains the lease of a claim (CONTRACT.md §9): `claims` counts how often the
  target was claimed and is the claim's fencing token; `lease_owner` names the worker holding
  (or, once done, the one that completed) it; `lease_expires_at` is when an unrenewed lease lapses,
  NULL once the target is done. A target is claimable when it was never claimed
  (`claims = 0`) or its lease has lapsed. SQLite runs have one process and leave them at rest.
- `rate_budgets`: one row per access key (by a hash of it, never the key), the token bucket all
  hosts crawling with that key draw from (`next_free_s`: the virtual time of the next free send,
  in the database server's epoch seconds) and `held_until_s` when an API answer said the key's
  minute is spent.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


def upgrade() -> None:
    """Add the lease columns and the rate budget table."""
    with op.batch_alter_table("crawl_targets") as batch:
        batch.add_column(sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_owner", sa.Text(), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", _INSTANT, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Claims scan only the targets still open (never claimed, or leased); renewals and
        # releases find a worker's leases by owner. SQLite runs have no claims: no index there.
        op.create_index(
            "ix_crawl_targets_open",
            "crawl_targets",
            ["run_id", "region_id", "image_id"],
            postgresql_where=sa.text("claims = 0 OR lease_expires_at IS NOT NULL"),
        )
        op.create_index(
            "ix_crawl_targets_leased",
            "crawl_targets",
            ["lease_owner"],
            postgresql_where=sa.text("lease_expires_at IS NOT NULL"),
        )
    op.create_table(
        "rate_budgets",
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("next_free_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("held_until_s", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("key_id", name="pk_rate_budgets"),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("rate_budgets")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_crawl_targets_leased", table_name="crawl_targets")
        op.drop_index("ix_crawl_targets_open", table_name="crawl_targets")
    with op.batch_alter_table("crawl_targets") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
        batch.drop_column("claims")
