"""cache 3: vectors keyed (image_id, source, model), so a search's lookup is one index probe
an id, whatever the planner's statistics say.

Under cache 2's key (source, image_id, model), PostgreSQL's planner, before it had
statistics for a table that had grown, matched only source and model in the index and
filtered every vector of the source by id: 61 ms for 200 vectors at 40,000 rows in
``bench.storage``, growing with the table (0.3 ms with the id first). The vectors are
kept: copied into the new table, on both engines.
"""

import sqlalchemy as sa
from alembic import op

revision = "cache3"
down_revision = "cache2"
branch_labels = None
depends_on = None

COLUMNS = "image_id, source, model, dim, vector"


def upgrade() -> None:
    op.create_table("embeddings_by_id",
                    sa.Column("image_id", sa.Text, nullable=False),
                    sa.Column("source", sa.Text, nullable=False),
                    sa.Column("model", sa.Text, nullable=False),
                    sa.Column("dim", sa.Integer, nullable=False),
                    sa.Column("vector", sa.LargeBinary, nullable=False),
                    sa.PrimaryKeyConstraint("image_id", "source", "model",
                                            name="embeddings_by_id_pkey"))
    op.execute(f"INSERT INTO embeddings_by_id ({COLUMNS}) SELECT {COLUMNS} FROM embeddings")
    op.drop_table("embeddings")
    op.rename_table("embeddings_by_id", "embeddings")
