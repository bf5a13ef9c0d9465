"""Tasks that exist only for the worker benchmark. The bench worker runs
`celery -A bench.tasks worker`: the production app, runtime and tasks, plus these.

- `bench.noop`: a bare Celery task, the ceiling for this broker, pool and machine.
- `bench.touch_user`: shaped like `users.send_welcome_email` without the SMTP step: through
  `run_recorded` (claim, then the work and SUCCEEDED in one transaction) on the child's loop and
  pooled engine, it locks the user's row, checks it, and stamps it.
- `bench.touch_user_asyncio_run`: the same run, but under `asyncio.run()`, so every
  `get_task_session()` opens and closes a connection of its own (the slow path).

Each task's last action, after its work committed, is one INCR of COUNTER_KEY: the benchmark
sees every kind finish in the same way, at the same cost.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Task
from kombu import Queue as KombuQueue
from pydantic import Field
from redis import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import Queue, TaskArgs, TaskContract
from shared.models import User
from shared.settings import settings
from worker.celery_app import app
from worker.recording import Done, RunContext, execute, run_recorded

__all__ = ["COUNTER_KEY", "NOOP", "QUEUE", "TOUCH_USER", "TOUCH_USER_ASYNCIO_RUN", "app"]

COUNTER_KEY = "bench:done"
# A queue of its own: a bench worker must never take messages a development stack or another
# run left on a shared Redis index, nor leave its own for them.
QUEUE = "bench"
app.conf.task_queues = [*app.conf.task_queues, KombuQueue(QUEUE, routing_key=QUEUE)]
NOOP = "bench.noop"


class TouchUserArgs(TaskArgs):
    user_id: int = Field(ge=1)


# Queue.DEFAULT is only what the contract declares; the benchmark publishes to QUEUE.
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


@app.task(name=TOUCH_USER_ASYNCIO_RUN.name, bind=True)
def touch_user_asyncio_run(self: Task[Any, Any], /, **kwargs: object) -> bool:
    # run_recorded always uses the child's loop; this is its body on a throwaway loop instead.
    run = RunContext(uuid.UUID(self.request.id), TOUCH_USER_ASYNCIO_RUN.name, kwargs, None, 0, 0)
    outcome = asyncio.run(execute(run, TOUCH_USER_ASYNCIO_RUN, touch_user_core))
    if not isinstance(outcome, Done):
        raise RuntimeError(f"bench task did not finish: {outcome!r}")
    _count_done()
    return outcome.value
