"""The task runtime of a worker child: its event loop, database sessions and broker client.

It answers one question: how does a synchronous Celery task run async database
code without leaking connections across processes or event loops?

- An asyncpg connection belongs to the event loop that opened it. `asyncio.run()` makes a new
  loop per call and closes it, so a pool kept across calls hands the second task a connection
  from a dead loop ("attached to a different loop", then "another operation is in progress").
- A pool inherited across fork shares sockets between processes.

So each worker child (after fork) keeps ONE event loop and ONE small pooled engine for its whole
life: `run_async()` runs a task's async core on that loop, and `get_task_session()` hands out
sessions from that engine, reusing connections from task to task. Connections per worker pod are
bounded by children x WORKER_DB_POOL_SIZE. A task written to the original standard, with
`asyncio.run()`, still works: on any other loop, `get_task_session()` opens a connection for
that session only and closes it before the loop ends (correct, just slower).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from celery.signals import worker_process_init, worker_process_shutdown
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.broker import Broker, connect_redis
from shared.db import make_engine, make_sessionmaker
from shared.settings import settings

T = TypeVar("T")


@dataclass
class _ChildRuntime:
    """What one worker child keeps for its whole life: a loop, and clients bound to it."""

    pid: int
    loop: asyncio.AbstractEventLoop
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis

    @classmethod
    def start(cls) -> _ChildRuntime:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        engine = make_engine(
            "worker",
            pool_size=settings.worker_db_pool_size,
            synchronous_commit=settings.worker_synchronous_commit,
        )
        redis = connect_redis(settings.redis_url.get_secret_value(), settings.publish_timeout)
        return cls(os.getpid(), loop, engine, make_sessionmaker(engine), redis)

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()


_runtime: _ChildRuntime | None = None


def _child_runtime() -> _ChildRuntime:
    """This process's runtime, created on first use. One inherited across fork is never
    reused: its sockets belong to the parent."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = _ChildRuntime.start()
    return _runtime


def _runtime_of_running_loop() -> _ChildRuntime | None:
    loop = asyncio.get_running_loop()
    if _runtime is not None and _runtime.pid == os.getpid() and _runtime.loop is loop:
        return _runtime
    return None


def run_async(core: Coroutine[Any, Any, T]) -> T:
    """Run a task's async core on this worker child's long-lived event loop."""
    return _child_runtime().loop.run_until_complete(core)


@asynccontextmanager
async def _transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    # Not `sessions.begin()`: batched tasks commit between batches, which that forbids.
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


@asynccontextmanager
async def get_task_session() -> AsyncIterator[AsyncSession]:
    """A session in a transaction: committed when the block ends, rolled back on error.

    On the child's loop (tasks run through `run_async`) it comes from the child's pool. On any
    other loop (a task that calls `asyncio.run()` itself) it gets a connection of its own,
    closed before the block ends, because that loop is about to disappear.
    """
    runtime = _runtime_of_running_loop()
    if runtime is not None:
        async with _transaction(runtime.sessions) as session:
            yield session
        return
    engine = make_engine(
        "worker", pool_size=None, synchronous_commit=settings.worker_synchronous_commit
    )
    try:
        # One connection for the whole block: a session bound to the engine would close it at
        # every intermediate commit (no pool) and reconnect for the next batch.
        async with (
            engine.connect() as connection,
            _transaction(make_sessionmaker(connection)) as session,
        ):
            yield session
    finally:
        await engine.dispose()


def get_task_broker() -> Broker:
    """The broker client for tasks that publish (the outbox relay), on the child's loop."""
    return Broker(_child_runtime().redis, settings.publish_timeout)


def _start_child_runtime(**_: object) -> None:
    global _runtime
    _runtime = _ChildRuntime.start()


def _close_child_runtime(**_: object) -> None:
    global _runtime
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.close()
    _runtime = None


def install() -> None:
    """Give every worker child its runtime when it starts, and close it when it stops."""
    worker_process_init.connect(_start_child_runtime, weak=False)
    worker_process_shutdown.connect(_close_child_runtime, weak=False)
