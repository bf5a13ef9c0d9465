"""The Celery app, its delivery settings, the beat schedule, and the task runtime.

The task runtime answers one question: how does a synchronous Celery task run async database
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
import os
import pkgutil
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from celery import Celery
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.schedules import crontab, schedule
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from kombu import Queue as KombuQueue
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import worker
from shared.beat import REDBEAT_KEY_PREFIX
from shared.broker import Broker, connect_redis
from shared.contracts import (
    CONTRACTS,
    DEACTIVATE_INACTIVE_USERS,
    PRUNE_LOGS,
    RELAY_OUTBOX,
    Queue,
)
from shared.db import make_engine, make_sessionmaker
from shared.logs import configure_logging
from shared.schema import SchemaNotCurrentError, ensure_schema_current
from shared.settings import settings
from worker import heartbeat, metrics, visibility
from worker.concurrent import ConcurrentPool, LoopThread
from worker.smtp import SmtpPool

T = TypeVar("T")

app = Celery("backend")
app.conf.update(
    broker_url=settings.redis_url.get_secret_value(),
    broker_connection_retry_on_startup=True,
    # JSON only: a pickle message is code execution for whoever can write to Redis.
    task_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # The task-run row is the durable record of every outcome; Celery keeps no results.
    task_ignore_result=True,
    # At-least-once: a message is acked after its task ends, and a child that dies mid-task
    # (SIGKILL, OOM) gives its message back. Every task is safe to run twice.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # With late acks, a prefetched message waits behind a long task; take one at a time.
    worker_prefetch_multiplier=1,
    # The soft limit is the runtime's (worker.recording): it cancels the core on the loop and
    # records the run as its contract says, in either pool. Celery's own soft limit would raise
    # in the thread waiting for the core instead. The hard limit is Celery's in a prefork
    # child; the concurrent pool's watchdog enforces it (worker.concurrent).
    task_soft_time_limit=None,
    task_time_limit=settings.task_time_limit,
    # Redis redelivers an unacked message after the visibility timeout. It is short (30 s) and
    # every live worker renews the messages it holds: worker.visibility adds the timeout, the
    # sweep's cadence and the renewal step.
    broker_transport_options={"socket_connect_timeout": 5, "socket_timeout": 30},
    # Losing the broker connection loses the acks of running late-ack tasks: they will be
    # redelivered, so stop them rather than let two copies run.
    worker_cancel_long_running_tasks_on_connection_loss=True,
    task_queues=[KombuQueue(queue.value, routing_key=queue.value) for queue in Queue],
    task_default_queue=Queue.DEFAULT.value,
    task_routes={name: {"queue": contract.queue.value} for name, contract in CONTRACTS.items()},
    task_create_missing_queues=False,
    timezone="UTC",
    enable_utc=True,
    worker_hijack_root_logger=False,
    # Beat: schedule state (each entry's last_run_at) and a lock in Redis (celery-redbeat, with
    # the non-blocking lock and heartbeat of worker.beat). Only the lock holder sends. It renews
    # the lock to BEAT_LOCK_TIMEOUT (15 s) on every loop, at most BEAT_MAX_LOOP_INTERVAL (5 s)
    # apart, and a standby tries it as often: after a SIGKILL of the holder another beat sends
    # within 15 + 5 s of the holder's last renewal. Ticks that fell due during that gap are not
    # replayed: an interval entry is sent once on takeover, then on its cadence again; a crontab
    # entry whose time passed during the gap is sent once, late. See docs/beat.md.
    beat_scheduler="worker.beat:HeartbeatScheduler",
    redbeat_redis_url=settings.redis_url.get_secret_value(),
    redbeat_key_prefix=REDBEAT_KEY_PREFIX,
    # Short socket timeouts: a tick never hangs on Redis for as long as the lock lasts; a failed
    # tick stops beat, and its pod restarts.
    redbeat_redis_options={"socket_connect_timeout": 5, "socket_timeout": 5},
    redbeat_lock_timeout=settings.beat_lock_timeout,
    beat_max_loop_interval=settings.beat_max_loop_interval,
)


def schedule_from_setting(value: str) -> crontab | schedule:
    """`"15 3 * * *"` is a crontab (UTC); a bare number is an interval in seconds (tests)."""
    try:
        return schedule(run_every=timedelta(seconds=float(value)))
    except ValueError:
        pass
    minute, hour, day_of_month, month_of_year, day_of_week = value.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


app.conf.beat_schedule = {
    "deactivate-inactive-users": {
        "task": DEACTIVATE_INACTIVE_USERS.name,
        "schedule": schedule_from_setting(settings.schedule_deactivate_inactive_users),
    },
    "prune-logs": {
        "task": PRUNE_LOGS.name,
        "schedule": schedule_from_setting(settings.schedule_prune_logs),
        "kwargs": {"days": 30},
    },
    "outbox-relay": {
        "task": RELAY_OUTBOX.name,
        "schedule": timedelta(seconds=settings.outbox_relay_interval),
        # Ticks sent while no worker runs expire instead of piling up.
        "options": {"expires": settings.outbox_relay_interval},
    },
}

heartbeat.install(app)
visibility.install(app)
metrics.install()


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    """Connected, so Celery leaves logging to us: the same JSON or text lines as the API."""
    configure_logging(settings.log_level, settings.effective_log_format)


# Every domain package of the worker (worker/<domain>/tasks.py) registers its tasks.
app.autodiscover_tasks(
    [module.name for module in pkgutil.iter_modules(worker.__path__, "worker.") if module.ispkg]
)


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
async def db_or_task_session(db: AsyncSession | None) -> AsyncIterator[AsyncSession]:
    """The injected session as it is (its owner commits), else a task session of our own."""
    if db is not None:
        yield db
        return
    async with get_task_session() as session:
        yield session


def get_task_broker() -> Broker:
    """The broker client for tasks that publish (the outbox relay), on the process's loop."""
    return Broker(_process_runtime().redis, settings.publish_timeout)


def get_smtp_pool() -> SmtpPool | None:
    """The process's SMTP sessions, for a core running on the process's loop; None on any
    other loop (a task that calls `asyncio.run()` itself sends over a connection of its own)."""
    runtime = _runtime_of_running_loop()
    return runtime.smtp if runtime is not None else None


@worker_init.connect
def _threads_pool_runs_on_the_loop(sender: object = None, **_: object) -> None:
    """`-P threads` means the threads pool with cancellable runs and a hard time limit."""
    if getattr(sender, "pool_cls", None) in ("threads", ThreadTaskPool):
        sender.pool_cls = ConcurrentPool  # type: ignore[attr-defined]


@worker_init.connect
def _refuse_an_unknown_schema(**_: object) -> None:
    """In the main process, before the pool forks (the check's engine is gone by then): a worker
    on a schema it was not written for would fail every task. An unreachable database is not a
    reason to refuse: tasks retry until it answers."""

    async def check() -> None:
        engine = make_engine("worker", pool_size=None)
        try:
            await ensure_schema_current(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except SchemaNotCurrentError as exc:
        # SystemExit, because Celery logs and swallows a receiver's ordinary exceptions.
        raise SystemExit(f"the worker refuses to start: {exc}") from None


@worker_process_init.connect
def _start_child_runtime(**_: object) -> None:
    """A prefork child starts its runtime at once; the threads pool's first run does."""
    _process_runtime()


@worker_process_shutdown.connect  # a prefork child
@worker_shutdown.connect  # the threads pool: after the pool stopped, its runs ended
def _close_process_runtime(**_: object) -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
        _runtime = None
