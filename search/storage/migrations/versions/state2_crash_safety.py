"""state 2: crash safety and pruning (page turns, claims by run, pending searches)."""

import sqlalchemy as sa
from alembic import op

revision = "state2"
down_revision = "state1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("meta")
    op.add_column("results", sa.Column("turning", sa.Integer, nullable=False,
                                       server_default="0"))
    op.create_index("results_age", "results", ["created_at"])
    op.add_column("picks", sa.Column("run_id", sa.Integer, nullable=False, server_default="0"))
    op.create_table("runs", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("started_at", sa.Float, nullable=False),
                    sqlite_autoincrement=True)
    op.create_table(
        "pending_interactions",
        sa.Column("interaction_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("application_id", sa.BigInteger, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False))
