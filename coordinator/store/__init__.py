"""The coordinator's own database: the engine factory (`db.py`), every table it owns
(`tables.py`) and their alembic migrations (`migrate.py`, `migrations/`)."""
