"""Alembic environment and revisions: the schema's history."""
