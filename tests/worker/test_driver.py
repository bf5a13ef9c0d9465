"""Hot statements run by asyncpg itself (worker.driver) give what SQLAlchemy's path gives, and a
connection lost meanwhile is dropped from the pool and retried as transient."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.models import TaskRun, TaskState
from worker import driver
from worker.errors import is_transient
from worker.recording import _CLAIM, _STORED


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection in autocommit, as the worker's runtime hands them out."""
    async with engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")


def claim_params(run_id: uuid.UUID) -> dict[str, object]:
    return {"id": run_id, "name": "probe", "kwargs": {"user_id": 7, "é": [1]}, "request_id": None}


async def test_rows_and_bound_values_are_sqlalchemys(e2e_engine: AsyncEngine) -> None:
    """The enum, JSONB and UUID values are bound as SQLAlchemy binds them, and the rows read
    the same on the driver (autocommit) as through SQLAlchemy (inside a transaction)."""
    run_id = uuid.uuid4()
    async with autocommit(e2e_engine) as connection:
        [first] = await driver.fetch(connection, _CLAIM, claim_params(run_id))
        [second] = await driver.fetch(connection, _CLAIM, claim_params(run_id))
    assert (first["state"], first["attempts"], second["attempts"]) == ("STARTED", 1, 2)
    async with e2e_engine.begin() as connection:
        [through_sqlalchemy] = await driver.fetch(connection, _STORED, {"id": run_id})
        kwargs = await connection.scalar(select(TaskRun.kwargs).where(TaskRun.id == run_id))
    assert dict(through_sqlalchemy) == {
        "state": TaskState.STARTED, "attempts": 2, "result": None, "request_id": None,
    }  # fmt: skip
    assert kwargs == {"user_id": 7, "é": [1]}
    async with autocommit(e2e_engine) as connection:
        [on_the_driver] = await driver.fetch(connection, _STORED, {"id": run_id})
    assert dict(on_the_driver) == dict(through_sqlalchemy)


async def test_a_lost_connection_is_transient_and_leaves_the_pool(e2e_engine: AsyncEngine) -> None:
    async with autocommit(e2e_engine) as connection:
        pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with e2e_engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DisconnectionError) as lost:
            await driver.fetch(connection, _STORED, {"id": uuid.uuid4()})
        assert is_transient(lost.value)
        assert connection.invalidated
    async with e2e_engine.connect() as connection:  # the pool opened a new one
        assert (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid


async def test_a_statement_rendered_at_each_execution_is_refused(e2e_engine: AsyncEngine) -> None:
    expanding = select(TaskRun.id).where(TaskRun.state.in_(bindparam("states", expanding=True)))
    async with autocommit(e2e_engine) as connection:
        with pytest.raises(ValueError, match="rendered again"):
            await driver.fetch(connection, expanding, {"states": ["QUEUED"]})
