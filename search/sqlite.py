"""Moved to ``search.storage`` (one schema, SQLite or PostgreSQL); kept for old imports."""

from .storage import (  # noqa: F401
    BUSY_TIMEOUT,
    BUSY_TRIES,
    Busy,
    Corrupt,
    Database,
    Full,
    StorageError,
    Unwritable,
    check_data_dir,
    classify,
)
