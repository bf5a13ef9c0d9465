"""The schema the code expects (the Alembic head), and the check that the database is at it."""

from __future__ import annotations

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine


class SchemaNotCurrentError(RuntimeError):
    pass


def alembic_config(url: URL | None = None) -> Config:
    """The same configuration as the root alembic.ini, for code (tests, start-up checks)."""
    config = Config()
    config.set_main_option("script_location", "shared:migrations")
    if url is not None:
        config.attributes["database_url"] = url
    return config


def expected_heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


async def ensure_schema_current(engine: AsyncEngine) -> None:
    """Refuse to serve on a database whose schema is not at the migrations' head."""
    async with engine.connect() as connection:
        current = await connection.run_sync(
            lambda sync: set(MigrationContext.configure(sync).get_current_heads())
        )
    expected = expected_heads()
    if current != expected:
        raise SchemaNotCurrentError(
            f"database {engine.url.database!r} is at revision {sorted(current) or 'none'}, "
            f"the code expects {sorted(expected)}: run `alembic upgrade head` first"
        )
