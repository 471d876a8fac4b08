"""`images.raw_digest`: what the rows of an image were last made from, for the re-crawl fast path.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00

`raw_digest` is the first 16 bytes of the SHA-256 of the normaliser's version, `[api]
naive_time_zone` and `raw` as the crawler encoded it (`crawler.normalise.raw_digest`), a BLOB
(bytea on PostgreSQL). A fetch whose digest equals the stored one would give the same rows, so the
store does not build them at all: only `last_seen_at` and `last_run_id` move. Any other fetch is
normalised and compared by content as before. The column starts NULL (existing images take the
full comparison once, which then stores their digest); adding it rewrites no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the column (SQLite's ALTER TABLE ADD COLUMN: no table rebuild, no row rewritten)."""
    op.add_column("images", sa.Column("raw_digest", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Drop it again: ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), never a batch rebuild,
    which would drop `images` and with it, by cascade, every disk, attachment and tag."""
    op.drop_column("images", "raw_digest")
