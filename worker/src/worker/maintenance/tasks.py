"""Housekeeping tasks."""

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from shared.contracts import PRUNE_LOGS, PruneLogsArgs
from shared.models import FINISHED_STATES, TaskRun
from shared.settings import settings
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from worker.celery_app import app, db_or_task_session
from worker.recording import run_recorded

PRUNE_BATCH = 10_000


@app.task(name=PRUNE_LOGS.name, bind=True, max_retries=settings.task_max_retries)
def prune_logs(self: Task[Any, Any], /, **kwargs: object) -> int:
    return run_recorded(self, PRUNE_LOGS, prune_logs_core, kwargs)


async def prune_logs_core(args: PruneLogsArgs, db: AsyncSession | None = None) -> int:
    """Delete finished task runs older than `args.days`, a batch at a time; unfinished runs
    are never touched.

    Batches are ranges of `finished_at`, walked upwards through its index: each batch's upper
    bound is the timestamp PRUNE_BATCH rows past the lower one. Picking batches with
    `id IN (SELECT ... LIMIT n)` instead rescans the index entries of every row already deleted
    (dead until vacuum), which makes the whole prune several times slower.
    """
    cutoff = datetime.now(UTC) - timedelta(days=args.days)
    finished = TaskRun.state.in_(FINISHED_STATES)
    deleted = 0
    lower: datetime | None = None
    async with db_or_task_session(db) as session:
        while True:
            in_range = [finished, TaskRun.finished_at < cutoff]
            if lower is not None:
                in_range.append(TaskRun.finished_at >= lower)
            upper = await session.scalar(
                select(TaskRun.finished_at)
                .where(*in_range)
                .order_by(TaskRun.finished_at)
                .offset(PRUNE_BATCH)
                .limit(1)
            )
            if upper is not None and upper == lower:
                batch = [finished, TaskRun.finished_at == upper]  # a tie group larger than a batch
            elif upper is not None:
                batch = [*in_range, TaskRun.finished_at < upper]
            else:
                batch = in_range
            connection = await session.connection()
            deleted += (await connection.execute(delete(TaskRun).where(*batch))).rowcount
            await session.commit()
            if upper is None:
                return deleted
            lower = upper
