"""Storage: SQLAlchemy Core tables on SQLite (default) or PostgreSQL (several instances)."""

from persona.store.engine import Store
from persona.store.metadata import metadata

__all__ = ["Store", "metadata"]
