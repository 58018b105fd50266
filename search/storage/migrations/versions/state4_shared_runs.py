"""state 4: several processes on one database: runs beat, pending searches name their run.

A run's ``seen_at`` is refreshed while it lives; another process takes over the pending
searches and unposted picks of a run that stopped beating. Rows from before (run 0) belong
to no live run.
"""

import sqlalchemy as sa
from alembic import op

revision = "state4"
down_revision = "state3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("seen_at", sa.Float, nullable=False, server_default="0"))
    op.add_column("pending_interactions", sa.Column("run_id", sa.Integer, nullable=False,
                                                    server_default="0"))
