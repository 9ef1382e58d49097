"""One module per schema revision (see :mod:`persona.store.migrations`); Alembic skips this file."""
