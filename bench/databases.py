"""The benchmarks' own PostgreSQL databases and Redis index, apart from development and tests.

Every database a benchmark creates or drops is named `backend_bench*`; anything else is refused,
so a wrong name can never drop real data. Tests use Redis indexes 1-14, the benchmarks use 15.
"""

from __future__ import annotations

import asyncio
import os

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from shared.db import make_engine
from shared.schema import alembic_config

PREFIX = "backend_bench"

# Overridable so the benchmarks can run against another server; never read through settings,
# which describe the application's own database.
SERVER = make_url(
    os.environ.get("BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
).set(drivername="postgresql+asyncpg")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


class NotABenchDatabaseError(RuntimeError):
    pass


def url_of(name: str) -> URL:
    if not name.startswith(PREFIX):
        raise NotABenchDatabaseError(f"refusing to touch database {name!r}: not {PREFIX}*")
    return SERVER.set(database=name)


async def _admin(*statements: str) -> None:
    engine = make_engine("bench", url=SERVER.set(database="postgres"))
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def drop_database(name: str) -> None:
    url_of(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def copy_database(template: str, name: str) -> None:
    """A fresh copy of `template`, file by file: its rows, indexes, statistics and visibility
    map come along, so both sides of a comparison start from the same vacuumed state."""
    url_of(template)
    await drop_database(name)
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')


def create_migrated_database(name: str) -> URL:
    """An empty database at the migrations' head (what tests.fixtures.database does, without
    its test-only name guard and its import-time switch of the environment to the tests')."""
    url = url_of(name)
    asyncio.run(drop_database(name))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    command.upgrade(alembic_config(url), "head")
    return url
