"""Storage: SQLAlchemy 2 tables and the CA's storage protocol over them.

SQLite (the embedded default) and PostgreSQL run the same code; the schema is
created and upgraded by Alembic migrations (``estkit.store.migrate``).
"""

from estkit.store.sql import PoolOptions, SqlStore, open_store

__all__ = ["PoolOptions", "SqlStore", "open_store"]
