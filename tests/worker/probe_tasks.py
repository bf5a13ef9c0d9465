"""Tasks that exist only for tests. A test worker runs `celery -A tests.worker.probe_tasks`:
the production app with every production task, plus these."""

import asyncio
import json
import os
import time
from typing import Any

from celery import Task
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import Queue, TaskArgs, TaskContract
from shared.models import User
from shared.settings import settings
from tests.fixtures.waiting import eventually
from worker.celery_app import app, get_task_session, run_async
from worker.recording import run_recorded

__all__ = ["app"]

PROBE_APP = __name__  # what a test worker passes to `celery -A`

REPORTS_KEY = "probe:reports"

# How long each fetch waits on an empty queue (kombu's default 1 s): longer, a test can stop the
# worker while Redis still holds its fetch, and be sure Redis answers it.
if fetch_wait := os.environ.get("PROBE_FETCH_WAIT"):
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "polling_interval": float(fetch_wait),
    }


def report(document: dict[str, object]) -> None:
    """Tell the test what happened, through Redis (the worker keeps no results)."""
    with Redis.from_url(settings.redis_url.get_secret_value()) as redis:
        redis.rpush(REPORTS_KEY, json.dumps(document))


async def reports(redis: AsyncRedis, count: int, timeout: float = 90) -> list[dict[str, int]]:
    """The test's side of `report`: the first `count` reports, once they are all in."""

    async def enough() -> bool:
        return int(await redis.llen(REPORTS_KEY)) >= count

    await eventually(enough, timeout, f"{count} task reports")
    return [json.loads(r) for r in await redis.lrange(REPORTS_KEY, 0, -1)]


async def _whoami() -> dict[str, object]:
    async with get_task_session() as session:
        backend_pid = await session.scalar(text("SELECT pg_backend_pid()"))
    return {"os_pid": os.getpid(), "backend_pid": backend_pid}


@app.task(name="tests.backend_pid")
def backend_pid() -> None:
    report(run_async(_whoami()))


@app.task(name="tests.backend_pid_asyncio_run")
def backend_pid_asyncio_run() -> None:
    """The original standard's form: a fresh event loop per task."""
    report(asyncio.run(_whoami()))


class SlowUpdateArgs(TaskArgs):
    user_id: int
    seconds: float


SLOW_UPDATE = TaskContract(
    "tests.slow_update", SlowUpdateArgs, int, Queue.DEFAULT, enqueueable=False
)


@app.task(name=SLOW_UPDATE.name, bind=True)
def slow_update(self: Task[Any, Any], /, **kwargs: object) -> int:
    return run_recorded(self, SLOW_UPDATE, _slow_update, kwargs)


async def _slow_update(args: SlowUpdateArgs, db: AsyncSession) -> int:
    """Appends one "+" to the user's name, then lingers before the commit."""
    await db.execute(
        update(User).where(User.id == args.user_id).values(full_name=User.full_name + "+")
    )
    report({"started": os.getpid()})
    await asyncio.sleep(args.seconds)
    return 1


RETRY_ONCE = "tests.retry_once"


@app.task(name=RETRY_ONCE, bind=True, max_retries=1)
def retry_once(self: Task[Any, Any], /, countdown: float) -> None:
    """Reports each delivery it runs, and asks for one retry after `countdown` seconds: the
    retry waits out its countdown in a worker's hands (an ETA message, unacked all along)."""
    report({"retry_once": self.request.retries, "pid": os.getpid()})
    if not self.request.retries:
        raise self.retry(countdown=countdown)


class SleepArgs(TaskArgs):
    seconds: float


# Cut off after 3 s, whatever TASK_SOFT_TIME_LIMIT says: one recorded FAILED, one retried once.
SLEEP = TaskContract(
    "tests.sleep", SleepArgs, float, Queue.DEFAULT, enqueueable=False, soft_time_limit=3
)
SLEEP_RETRIED = TaskContract(
    "tests.sleep_retried",
    SleepArgs,
    float,
    Queue.DEFAULT,
    enqueueable=False,
    soft_time_limit=3,
    retry_on_time_limit=True,
)


async def _sleep(args: SleepArgs, db: AsyncSession) -> float:
    await asyncio.sleep(args.seconds)
    return args.seconds


@app.task(name=SLEEP.name, bind=True, max_retries=1)
def sleep(self: Task[Any, Any], /, **kwargs: object) -> float:
    return run_recorded(self, SLEEP, _sleep, kwargs)


@app.task(name=SLEEP_RETRIED.name, bind=True, max_retries=1)
def sleep_retried(self: Task[Any, Any], /, **kwargs: object) -> float:
    return run_recorded(self, SLEEP_RETRIED, _sleep, kwargs)


@app.task(name="tests.block_the_loop")
def block_the_loop(seconds: float) -> None:
    """A core that never yields: it holds up every run on its process's loop."""

    async def block() -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - the point: a core that blocks its loop

    run_async(block())
