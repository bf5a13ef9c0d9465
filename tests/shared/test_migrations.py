import asyncio

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from shared.db import make_engine
from shared.models import Base
from shared.schema import SchemaNotCurrentError, alembic_config, ensure_schema_current
from tests.environment import TEST_DATABASE_URL
from tests.fixtures.postgres import create_migrated_database


@pytest.fixture(scope="module")
def scratch_database() -> URL:
    url = TEST_DATABASE_URL.set(database=f"{TEST_DATABASE_URL.database}_migrations")
    create_migrated_database(url)
    return url


def _schema_diff(url: URL) -> list[object]:
    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async def run() -> list[object]:
        engine = make_engine("test", url=url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _check_current(url: URL) -> None:
    async def run() -> None:
        engine = make_engine("test", url=url)
        try:
            await ensure_schema_current(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_upgrade_downgrade_upgrade_round_trips(scratch_database: URL) -> None:
    config = alembic_config(scratch_database)
    command.downgrade(config, "base")
    with pytest.raises(SchemaNotCurrentError, match="alembic upgrade head"):
        _check_current(scratch_database)
    command.upgrade(config, "head")
    _check_current(scratch_database)


def test_migrations_create_exactly_what_the_models_declare(scratch_database: URL) -> None:
    assert _schema_diff(scratch_database) == []
