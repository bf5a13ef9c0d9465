"""The outbox relay: publishes what the API could not, and repairs what the broker lost."""

import time
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from shared.broker import Broker
from shared.contracts import RELAY_OUTBOX, NoArgs
from shared.runs.outbox import relay_unpublished, repair_lost
from shared.settings import settings
from worker.decorator import task
from worker.runtime import get_task_broker


@task(RELAY_OUTBOX, commits=True)
async def relay_outbox(args: NoArgs, db: AsyncSession) -> int:
    """A quiet task (see its contract): no run row per tick, and a log line only when it
    handled something."""
    return await relay(db, get_task_broker())


async def relay(db: AsyncSession, broker: Broker) -> int:
    """Publish unpublished runs batch by batch (for at most one relay interval, so a large
    backlog never makes ticks overlap for long), then repair one batch of lost runs. Each batch
    commits as soon as its messages are sent."""
    deadline = time.monotonic() + settings.outbox_relay_interval
    handled = 0
    while True:
        published = await relay_unpublished(
            db,
            broker,
            grace=timedelta(seconds=settings.outbox_grace_seconds),
            batch_size=settings.outbox_batch_size,
        )
        await db.commit()
        handled += published
        if published < settings.outbox_batch_size or time.monotonic() > deadline:
            break
    handled += await repair_lost(
        db,
        broker,
        repair_after=timedelta(seconds=settings.outbox_repair_after),
        retry_backoff_max=timedelta(seconds=settings.task_retry_backoff_max),
        time_limit=timedelta(seconds=settings.task_time_limit),
        max_attempts=settings.task_max_attempts,
        batch_size=settings.outbox_batch_size,
    )
    return handled
