"""cache 2: responses keyed by endpoint + key fingerprint, vectors by endpoint.

Release 1's rows cannot say which endpoint they came from, so they are dropped, not guessed.
"""

import sqlalchemy as sa
from alembic import op

revision = "cache2"
down_revision = "cache1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("api_cache")
    op.drop_table("embeddings")
    op.drop_table("meta")
    op.create_table("api_cache", sa.Column("scope", sa.Text, primary_key=True),
                    sa.Column("request", sa.Text, primary_key=True),
                    sa.Column("fetched_at", sa.Float, nullable=False),
                    sa.Column("body", sa.Text, nullable=False))
    op.create_index("api_cache_age", "api_cache", ["fetched_at"])
    op.create_table("embeddings", sa.Column("source", sa.Text, primary_key=True),
                    sa.Column("image_id", sa.Text, primary_key=True),
                    sa.Column("model", sa.Text, primary_key=True),
                    sa.Column("dim", sa.Integer, nullable=False),
                    sa.Column("vector", sa.LargeBinary, nullable=False))
