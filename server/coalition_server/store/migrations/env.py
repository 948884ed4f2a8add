"""Alembic environment: migrations always run on a connection handed in by migrate.py."""

from alembic import context

from coalition_server.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `coalition-server migrate`")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
