"""Alembic environment: runs migrations over the async engine from shared.db."""

import asyncio

from alembic import context
from sqlalchemy.engine import URL, Connection

from shared.db import make_engine
from shared.models import Base
from shared.settings import settings

config = context.config
target_metadata = Base.metadata


def _url() -> URL:
    # Tests and scripts pass the database explicitly; everyone else uses DATABASE_URL.
    override = config.attributes.get("database_url")
    return override if isinstance(override, URL) else settings.database


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = make_engine("migrate", url=_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
