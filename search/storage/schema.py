"""The tables, once, for both engines: SQLite (the default) and PostgreSQL.

Two groups share one migration history (``migrations/``) as two Alembic branches:
``cache`` (responses and vectors, DATA_DIR/search.sqlite3 by default) and ``state``
(what a reaction needs, DATA_DIR/bot.sqlite3). With DATABASE_URL both live in one
PostgreSQL database. This module describes the head of each branch; the revisions keep
their own frozen copies, so editing a table here never rewrites history.

Discord ids are snowflakes past 2**31: BigInteger. Image ids are text, because Openverse's
are UUIDs (Pixabay's numbers are compared as text too).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# -- the cache branch ----------------------------------------------------------------
api_cache = sa.Table(
    "api_cache", metadata,
    sa.Column("scope", sa.Text, primary_key=True),  # source endpoint + key fingerprint
    sa.Column("request", sa.Text, primary_key=True),
    sa.Column("fetched_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("api_cache_age", "fetched_at"),
)

embeddings = sa.Table(
    "embeddings", metadata,
    sa.Column("image_id", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # the source's endpoint
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32, little-endian
    # the id first: a search's 200 ids are 200 index probes, statistics or not (cache 3)
    sa.PrimaryKeyConstraint("image_id", "source", "model", name="embeddings_by_id_pkey"),
)

# -- the state branch ----------------------------------------------------------------
results = sa.Table(
    "results", metadata,
    sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("channel_id", sa.BigInteger, nullable=False),
    sa.Column("guild_id", sa.BigInteger),
    sa.Column("requester_id", sa.BigInteger, nullable=False),
    sa.Column("tag", sa.Text, nullable=False),
    sa.Column("phrase", sa.Text, nullable=False),
    sa.Column("filters", sa.Text, nullable=False),
    sa.Column("per_page", sa.Integer, nullable=False),
    sa.Column("page", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("ranking", sa.Text, nullable=False),  # '' once pruned: "these expired"
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("turning", sa.Integer, nullable=False, server_default="0"),
    sa.Index("results_age", "created_at"),
)

picks = sa.Table(
    "picks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("guild_id", sa.BigInteger, nullable=False),
    sa.Column("image_id", sa.Text, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("phrase", sa.Text, nullable=False),
    sa.Column("page_url", sa.Text, nullable=False),
    sa.Column("source_message_id", sa.BigInteger, nullable=False),
    sa.Column("channel_id", sa.BigInteger),
    sa.Column("message_id", sa.BigInteger),  # NULL: claimed, not yet recorded as posted
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False, server_default="0"),
    sa.Index("picks_recent", "guild_id", "created_at"),
    sqlite_autoincrement=True,
)

guild_settings = sa.Table(
    "guild_settings", metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("picks_channel_id", sa.BigInteger),
)

# One row per process start. ``seen_at`` is its heartbeat: a run not seen for a while
# (or closed, seen_at = 0) is dead, and another process finishes what it left.
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)

pending_interactions = sa.Table(
    "pending_interactions", metadata,
    sa.Column("interaction_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("application_id", sa.BigInteger, nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False, server_default="0"),
)

results_view = sa.Table(
    "results_view", metadata,
    sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("view", sa.Text, nullable=False),
)

shared_picks = sa.Table(
    "shared_picks", metadata,
    sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("pick_id", sa.Integer, nullable=False),
    sa.Column("results_message_id", sa.BigInteger, nullable=False),
    sa.Column("hit", sa.Text, nullable=False),
)
