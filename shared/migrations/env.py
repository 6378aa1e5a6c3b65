"""Alembic environment: runs migrations online against the URL given by the caller."""

from __future__ import annotations

from alembic import context

from shared.db import make_engine
from shared.models import Base

config = context.config


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Revisions must not import the models: render our UTC column type as plain DateTime.
    if type_ == "type" and type(obj).__name__ == "Timestamp":
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite cannot ALTER constraints in place; batch mode rebuilds the table.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
