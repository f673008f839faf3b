"""Alembic environment: runs on the connection handed over by ``upgrade_schema``."""

from __future__ import annotations

from alembic import context

from openvna.index.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when alembic's own CLI is used
    raise RuntimeError("run migrations through openvna.index.database.upgrade_schema")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
