"""Tasks that exist only for the worker benchmark. The bench worker runs
`celery -A bench.tasks worker`: the production app, runtime and tasks, plus these.

- `bench.noop`: a bare Celery task, the ceiling for this broker, pool and machine.
- `bench.touch_user`: shaped like `users.send_welcome_email` without the SMTP step: through
  `run_recorded` (claim, then the work and SUCCEEDED in one transaction) on the child's loop and
  pooled engine, it locks the user's row, checks it, and stamps it.
- `bench.touch_user_asyncio_run`: the same core written the original standard's way, with
  `asyncio.run()` around `get_task_session()`, so every task opens and closes a connection of
  its own (the slow path). It records no run: the claim and SUCCEEDED are (b)'s extra work.

Each task's last action, after its work committed, is one INCR of COUNTER_KEY: the benchmark
sees every kind finish in the same way, at the same cost. The production app is used as it is
(its queues, its runtime); the benchmark gives the worker a Redis of its own.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from celery import Task
from pydantic import Field
from redis import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import Queue, TaskArgs, TaskContract
from shared.models import User
from shared.settings import settings
from worker.celery_app import app, get_task_session
from worker.recording import run_recorded

__all__ = ["COUNTER_KEY", "NOOP", "TOUCH_USER", "TOUCH_USER_ASYNCIO_RUN", "app"]

COUNTER_KEY = "bench:done"
NOOP = "bench.noop"


class TouchUserArgs(TaskArgs):
    user_id: int = Field(ge=1)


TOUCH_USER = TaskContract("bench.touch_user", TouchUserArgs, bool, Queue.DEFAULT, False)
TOUCH_USER_ASYNCIO_RUN = TaskContract(
    "bench.touch_user_asyncio_run", TouchUserArgs, bool, Queue.DEFAULT, False
)

_counter: tuple[int, Redis] | None = None


def _count_done() -> None:
    # One client per child, made after the fork: a client inherited from the parent would share
    # its socket with the other children.
    global _counter
    if _counter is None or _counter[0] != os.getpid():
        _counter = (os.getpid(), Redis.from_url(settings.redis_url.get_secret_value()))
    _counter[1].incr(COUNTER_KEY)


@app.task(name=NOOP)
def noop() -> None:
    _count_done()


async def touch_user_core(args: TouchUserArgs, db: AsyncSession) -> bool:
    """`send_welcome_email` minus the email: the row stays locked from check to commit."""
    user = await db.scalar(select(User).where(User.id == args.user_id).with_for_update())
    if user is None or user.welcome_email_sent_at is not None:
        return False
    user.welcome_email_sent_at = datetime.now(UTC)
    await db.flush()
    return True


@app.task(name=TOUCH_USER.name, bind=True, max_retries=settings.task_max_retries)
def touch_user(self: Task[Any, Any], /, **kwargs: object) -> bool:
    done = run_recorded(self, TOUCH_USER, touch_user_core, kwargs)
    _count_done()
    return done


async def _touch_user_on_a_fresh_loop(args: TouchUserArgs) -> bool:
    async with get_task_session() as db:  # committed when the block ends
        return await touch_user_core(args, db)


@app.task(name=TOUCH_USER_ASYNCIO_RUN.name)
def touch_user_asyncio_run(user_id: int) -> bool:
    done = asyncio.run(_touch_user_on_a_fresh_loop(TouchUserArgs(user_id=user_id)))
    _count_done()
    return done
