"""The crawler's Alembic migrations (installed as `crawler.migrations`).

See `crawler.store.migrate`.
"""
