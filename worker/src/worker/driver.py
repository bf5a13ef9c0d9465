"""A run's hot statements, executed by asyncpg itself on a connection from SQLAlchemy's pool.

The concurrent worker is bound by one core, so CPU per statement is its throughput. SQLAlchemy's
execution path (an execution context, parameter processing, a result object, and on the async
engine a greenlet switch each way) costs about three times asyncpg's own `fetch` of the same
prepared statement: ~0.3 against ~0.1 ms measured here, and every welcome email runs three
statements. So the statements that every run executes (its claim and its SUCCEEDED record,
the welcome email's user claim) are still built with SQLAlchemy, compiled once, and their
bound values converted by the types' own processors, as SQLAlchemy would; only the execution
skips its layers.

Only on a connection in autocommit, where each statement stands alone: inside a transaction
SQLAlchemy's asyncpg adapter sends BEGIN lazily, before its own first statement, so one of
these could run outside the transaction it belongs to. There (a test's session, a core's own
transaction) the statement goes through SQLAlchemy, with the same rows back.

Errors: PostgreSQL's come through as asyncpg raises them (on SQLAlchemy's path they would be
wrapped, not retried either way). A connection lost meanwhile is invalidated, so that the pool
drops it, and raised as `DisconnectionError`, which a run retries as it would on SQLAlchemy's
path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

Row = Mapping[str, Any]
Statement = Select[*tuple[Any, ...]] | UpdateBase  # with RETURNING


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the bound values' names, in positional order
    processors: tuple[Callable[[Any], Any] | None, ...]
    construct_params: Callable[[Mapping[str, object]], Mapping[str, Any]]

    def arguments(self, params: Mapping[str, object]) -> list[Any]:
        values = self.construct_params(params)  # with the values the statement itself binds
        ordered = (values[name] for name in self.names)
        return [
            value if process is None else process(value)
            for value, process in zip(ordered, self.processors, strict=True)
        ]


@lru_cache(maxsize=128)  # statements are built once, at import, so each compiles once
def _compile(statement: Statement, dialect: Dialect) -> _Compiled:
    compiled: Any = statement.compile(dialect=dialect)
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError("a statement rendered again at each execution cannot run on the driver")
    names = tuple(compiled.positiontup)
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    return _Compiled(compiled.string, names, processors, compiled.construct_params)


async def fetch(
    connection: AsyncConnection, statement: Statement, params: Mapping[str, object]
) -> Sequence[Row]:
    """The rows `statement` returns (an UPDATE or INSERT with RETURNING, or a SELECT)."""
    sync_connection = connection.sync_connection
    if (
        sync_connection is None
        or sync_connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT"
    ):
        result = await connection.execute(statement, params)
        return [dict(row._mapping) for row in result]
    compiled = _compile(statement, connection.dialect)
    driver = sync_connection.connection.driver_connection
    assert driver is not None  # the connection is open
    try:
        rows: Sequence[Row] = await driver.fetch(compiled.sql, *compiled.arguments(params))
    except Exception as error:
        if driver.is_closed():
            await connection.invalidate(error)
            raise DisconnectionError(f"the database connection was lost: {error}") from error
        raise
    return rows
