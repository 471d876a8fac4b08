"""`images.answer_digest`: the describeImage answer an image's rows were made from, for re-crawls.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:00:00

`answer_digest` is the first 16 bytes of the SHA-256 of the normaliser's version, `[api]
naive_time_zone` and the body of the describeImage answer the image's rows were last made from,
with its `requestId` member cut out (`crawler.client.answer_digest`), a BLOB (bytea on
PostgreSQL). A re-crawl reads it with the run's targets; an answer whose digest equals it is
byte for byte the answer already checked and stored, but for its request id, so it is neither
parsed nor checked again: only `last_seen_at` and `last_run_id` move. It is NULL for an image last
written from anything else (describeImages, an answer of another shape) and is set back to NULL
when the image is marked missing. The column starts NULL (existing images take the `raw_digest`
path once, which then stores it); adding it rewrites no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the column (SQLite's ALTER TABLE ADD COLUMN: no table rebuild, no row rewritten)."""
    op.add_column("images", sa.Column("answer_digest", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Drop it again: ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), never a batch rebuild,
    which would drop `images` and with it, by cascade, every disk, attachment and tag."""
    op.drop_column("images", "answer_digest")
