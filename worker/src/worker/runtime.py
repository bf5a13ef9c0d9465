"""The task runtime of a worker process: its event loop, sessions, broker and SMTP clients.

It answers one question: how does a synchronous Celery task run async database
code without leaking connections across processes or event loops?

- An asyncpg connection belongs to the event loop that opened it. `asyncio.run()` makes a new
  loop per call and closes it, so a pool kept across calls hands the second task a connection
  from a dead loop ("attached to a different loop", then "another operation is in progress").
- A pool inherited across fork shares sockets between processes.

So each worker process (a prefork child, after fork; or the one process of a threads-pool
worker) keeps ONE event loop, in a thread of its own, and ONE engine with a bounded pool
(WORKER_DB_POOL_SIZE), one Redis client and one pool of SMTP sessions, all bound to that loop:
`run_async()` submits a task's async core to the loop and waits for it, and
`get_task_session()` hands out sessions from that engine, reusing connections from run to run.

Many runs in flight per process (issue: I/O-bound tasks spend their time waiting on the
network). Celery 5 has no async tasks, so the concurrent worker keeps Celery's `threads` pool
(`-P threads -c 100`, worker.kinds) for delivery: late acks, retries, warm shutdown. Each pool
thread only waits while its run's core runs on the process's one loop, so a hundred threads are
a hundred runs in flight sharing one loop, one engine and one SMTP pool. `-P threads` gets
worker.concurrent.ConcurrentPool (swapped in at worker_init): the threads pool plus what it
lacks and prefork had, namely cancelling a run (on broker connection loss) and the hard time
limit (a watchdog). The soft limit is enforced on the loop by the run itself (worker.recording).
Chosen over a pool class that runs cores as asyncio tasks directly: Celery's request, ack and
retry machinery stays as tested, and the prefork kind runs the very same runtime.

Connections: a worker process holds at most WORKER_DB_POOL_SIZE PostgreSQL connections for its
runs, however many are in flight; a run waiting for one is not an error (a pool timeout is
transient), and no run holds one while it waits on the network (the welcome email claims,
sends, then stamps: worker.users.tasks). A task written to the original standard, with
`asyncio.run()`, still works: on any other loop, `get_task_session()` opens a connection for
that session only and closes it before the loop ends (correct, just slower).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from shared.broker import Broker, connect_redis
from shared.db import make_engine, make_sessionmaker
from shared.settings import settings
from worker.concurrent import ConcurrentPool, LoopThread
from worker.smtp import SmtpPool

T = TypeVar("T")


@dataclass
class _ProcessRuntime:
    """What one worker process (a prefork child, or the whole threads-pool worker) keeps for
    its whole life: an event loop in a thread of its own, and clients bound to that loop."""

    pid: int
    loop_thread: LoopThread
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    smtp: SmtpPool

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.loop_thread.loop

    @classmethod
    def start(cls) -> _ProcessRuntime:
        tune_garbage_collection()
        loop_thread = LoopThread()
        engine = make_engine(
            "worker",
            pool_size=settings.worker_db_pool_size,
            synchronous_commit=settings.worker_synchronous_commit,
        )
        redis = connect_redis(settings.redis_url.get_secret_value(), settings.publish_timeout)
        smtp = SmtpPool(settings.smtp_pool_size)
        return cls(os.getpid(), loop_thread, engine, make_sessionmaker(engine), redis, smtp)

    def close(self) -> None:
        async def close_clients() -> None:
            await self.smtp.close()
            await self.engine.dispose()
            await self.redis.aclose()

        self.loop_thread.call(close_clients())
        self.loop_thread.stop()


# Cyclic garbage collection took ~4.5% of the concurrent worker's CPU over a drain of welcome
# emails: over a dozen young collections a second, each traversing what survived, and full ones
# traversing every object made at start-up (Celery's app, SQLAlchemy's compiled statements,
# pydantic's validators), which live as long as the process. Reference counting frees nearly
# everything a run allocates, so the collector is told to leave the start-up objects alone and
# to look at the young generation ten times less often: ~0.2% of the CPU, measured the same way.
GC_YOUNG_THRESHOLD = 7_000


def tune_garbage_collection() -> None:
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


_runtime: _ProcessRuntime | None = None
_runtime_lock = threading.Lock()


def _process_runtime() -> _ProcessRuntime:
    """This process's runtime, created on first use (by whichever pool thread comes first).
    One inherited across fork is never reused: its sockets and its thread stayed in the
    parent."""
    global _runtime
    runtime = _runtime
    if runtime is not None and runtime.pid == os.getpid():
        return runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = _ProcessRuntime.start()
        return _runtime


def _runtime_of_running_loop() -> _ProcessRuntime | None:
    loop = asyncio.get_running_loop()
    runtime = _runtime
    if runtime is not None and runtime.pid == os.getpid() and runtime.loop is loop:
        return runtime
    return None


def run_async(core: Coroutine[Any, Any, T]) -> T:
    """Run a task's async core on this process's event loop and wait for its result. Many
    pool threads may wait at once: their cores run concurrently on the one loop."""
    return _process_runtime().loop_thread.run(core)


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


@asynccontextmanager
async def get_autocommit_connection() -> AsyncIterator[AsyncConnection]:
    """A connection in autocommit, for one-statement writes that need no transaction (a run's
    claim): from the process's pool on its loop, without a session's bookkeeping, which costs
    more Python time than the statement. On any other loop, a session's connection."""
    runtime = _runtime_of_running_loop()
    if runtime is None:
        async with get_task_session() as session:
            yield await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return
    async with runtime.engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")


def get_task_broker() -> Broker:
    """The broker client for tasks that publish (the outbox relay), on the process's loop."""
    return Broker(_process_runtime().redis, settings.publish_timeout)


def get_smtp_pool() -> SmtpPool | None:
    """The process's SMTP sessions, for a core running on the process's loop; None on any
    other loop (a task that calls `asyncio.run()` itself sends over a connection of its own)."""
    runtime = _runtime_of_running_loop()
    return runtime.smtp if runtime is not None else None


def _threads_pool_runs_on_the_loop(sender: object = None, **_: object) -> None:
    """`-P threads` means the threads pool with cancellable runs and a hard time limit."""
    if getattr(sender, "pool_cls", None) in ("threads", ThreadTaskPool):
        sender.pool_cls = ConcurrentPool  # type: ignore[attr-defined]


def _start_child_runtime(**_: object) -> None:
    """A prefork child starts its runtime at once; the threads pool's first run does."""
    _process_runtime()


def _close_process_runtime(**_: object) -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
        _runtime = None


def install() -> None:
    """Connect the runtime to the worker's life cycle: the pool class, and each process's
    runtime started and closed with it."""
    worker_init.connect(_threads_pool_runs_on_the_loop, weak=False)
    worker_process_init.connect(_start_child_runtime, weak=False)
    worker_process_shutdown.connect(_close_process_runtime, weak=False)  # a prefork child
    # The threads pool: after the pool stopped, its runs ended.
    worker_shutdown.connect(_close_process_runtime, weak=False)
