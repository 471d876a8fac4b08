"""The crawler's Alembic migrations (installed as `crawler.migrations`; see `crawler.migrate`)."""
