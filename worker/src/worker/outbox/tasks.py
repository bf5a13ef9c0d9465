"""The outbox relay: publishes what the API could not, and repairs what the broker lost."""

import time
from datetime import timedelta
from typing import Any

from celery import Task
from sqlalchemy.ext.asyncio import AsyncSession

from shared.broker import Broker
from shared.contracts import RELAY_OUTBOX, NoArgs
from shared.runs.outbox import relay_unpublished, repair_lost
from shared.settings import settings
from worker.celery_app import app, db_or_task_session, get_task_broker
from worker.recording import run_recorded


# No retries: the next tick, a few seconds away, is the retry.
@app.task(name=RELAY_OUTBOX.name, bind=True, max_retries=0)
def relay_outbox(self: Task[Any, Any], /, **kwargs: object) -> int:
    return run_recorded(self, RELAY_OUTBOX, relay_outbox_core, kwargs)


async def relay_outbox_core(
    args: NoArgs, db: AsyncSession | None = None, broker: Broker | None = None
) -> int:
    """Publish unpublished runs batch by batch (for at most one relay interval, so a large
    backlog never makes ticks overlap for long), then repair one batch of lost runs."""
    broker = broker or get_task_broker()
    deadline = time.monotonic() + settings.outbox_relay_interval
    handled = 0
    async with db_or_task_session(db) as session:
        while True:
            published = await relay_unpublished(
                session,
                broker,
                grace=timedelta(seconds=settings.outbox_grace_seconds),
                batch_size=settings.outbox_batch_size,
            )
            await session.commit()
            handled += published
            if published < settings.outbox_batch_size or time.monotonic() > deadline:
                break
        handled += await repair_lost(
            session,
            broker,
            repair_after=timedelta(seconds=settings.outbox_repair_after),
            retry_backoff_max=timedelta(seconds=settings.task_retry_backoff_max),
            time_limit=timedelta(seconds=settings.task_time_limit),
            max_attempts=settings.task_max_attempts,
            batch_size=settings.outbox_batch_size,
        )
        return handled
