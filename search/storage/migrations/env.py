"""Alembic's entry: always handed an open connection by ``search.storage.database``.

The caller holds the lock (PostgreSQL's advisory lock, SQLite's write lock) and the
transaction, so processes starting together never race to create or upgrade a table.
"""

from alembic import context

from search.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
