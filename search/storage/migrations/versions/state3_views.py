"""state 3: how a results message looks, and the pick messages 🔍 can start from."""

import sqlalchemy as sa
from alembic import op

revision = "state3"
down_revision = "state2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "results_view",
        sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("view", sa.Text, nullable=False))
    op.create_table(
        "shared_picks",
        sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("pick_id", sa.Integer, nullable=False),
        sa.Column("results_message_id", sa.BigInteger, nullable=False),
        sa.Column("hit", sa.Text, nullable=False))
