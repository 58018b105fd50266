"""state 1: the first release (results, picks, server settings)."""

import sqlalchemy as sa
from alembic import op

revision = "state1"
down_revision = None
branch_labels = ("state",)
depends_on = None


def upgrade() -> None:
    op.create_table("meta", sa.Column("key", sa.Text, primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "results",
        sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("channel_id", sa.BigInteger, nullable=False),
        sa.Column("guild_id", sa.BigInteger),
        sa.Column("requester_id", sa.BigInteger, nullable=False),
        sa.Column("tag", sa.Text, nullable=False), sa.Column("phrase", sa.Text, nullable=False),
        sa.Column("filters", sa.Text, nullable=False),
        sa.Column("per_page", sa.Integer, nullable=False),
        sa.Column("page", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("ranking", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False))
    op.create_table(
        "picks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("image_id", sa.Text, nullable=False),
        sa.Column("member_id", sa.BigInteger, nullable=False),
        sa.Column("phrase", sa.Text, nullable=False),
        sa.Column("page_url", sa.Text, nullable=False),
        sa.Column("source_message_id", sa.BigInteger, nullable=False),
        sa.Column("channel_id", sa.BigInteger), sa.Column("message_id", sa.BigInteger),
        sa.Column("created_at", sa.Float, nullable=False),
        sqlite_autoincrement=True)
    op.create_index("picks_recent", "picks", ["guild_id", "created_at"])
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("picks_channel_id", sa.BigInteger))
