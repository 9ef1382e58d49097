"""The store's schema history as Alembic migrations; :mod:`persona.store.schema` runs and checks them.

``versions/`` holds one file per revision, oldest first: ``0001_baseline`` is the schema as it stood when
migrations began (written to adopt a store an older release created with ``create_all``), every later file
one change. To change the schema: edit the table module, then add the next file (``down_revision`` the
previous head) whose ``upgrade()`` makes that change with ``op`` (``op.batch_alter_table`` for SQLite, which
cannot alter columns in place); ``tests/test_migrations.py`` fails until the migrated schema equals the
tables the code declares. A fresh store is created from the tables and stamped at the head (Alembic's
cookbook, "Building an Up to Date Database from Scratch"), so only existing stores run the history.
"""
