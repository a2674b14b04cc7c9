"""Alembic revisions of the tusserver schema (shipped in the package as `tusserver.migrations`)."""
