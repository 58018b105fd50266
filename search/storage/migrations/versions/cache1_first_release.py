"""cache 1: the first release's caches (kept so its SQLite files upgrade through cache 2)."""

import sqlalchemy as sa
from alembic import op

revision = "cache1"
down_revision = None
branch_labels = ("cache",)
depends_on = None


def upgrade() -> None:
    op.create_table("meta", sa.Column("key", sa.Text, primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
    op.create_table("api_cache", sa.Column("key", sa.Text, primary_key=True),
                    sa.Column("fetched_at", sa.Float, nullable=False),
                    sa.Column("body", sa.Text, nullable=False))
    op.create_table("embeddings", sa.Column("provider", sa.Text, primary_key=True),
                    sa.Column("image_id", sa.Text, primary_key=True),
                    sa.Column("model", sa.Text, primary_key=True),
                    sa.Column("dim", sa.Integer, nullable=False),
                    sa.Column("vector", sa.LargeBinary, nullable=False))
