"""Alembic migrations for the lemoe-server database (run them with `app.store.db.migrate`)."""
