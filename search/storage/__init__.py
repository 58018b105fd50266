"""The caches and the bot's state: one schema for SQLite (default) and PostgreSQL.

``Database`` opens either engine and runs transactions; ``schema`` holds the tables;
``migrations/`` is the one Alembic history (branches ``cache`` and ``state``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import (
    BUSY_TIMEOUT,
    BUSY_TRIES,
    Busy,
    Corrupt,
    Database,
    DatabaseUrlError,
    Full,
    StorageError,
    Unavailable,
    Unwritable,
    check_data_dir,
    classify,
    describe_url,
    is_url,
)

__all__ = [
    "BUSY_TIMEOUT", "BUSY_TRIES", "Busy", "Corrupt", "Database", "DatabaseUrlError", "Full",
    "StorageError", "Unavailable", "Unwritable", "check_data_dir", "classify", "describe_url",
    "is_url", "upsert",
]


async def upsert(conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]] | dict,
                 ) -> None:
    """INSERT, or UPDATE the row with the same primary key: the same in both dialects."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
    keys = [c.name for c in table.primary_key.columns]
    update = {c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys}
    await conn.execute(insert.on_conflict_do_update(index_elements=keys, set_=update), rows)
