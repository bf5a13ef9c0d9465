"""The transactional outbox: nothing the API accepted is ever lost.

A task run is a row first (written in the same transaction as the domain rows it belongs to)
and a broker message second. The API publishes right after its commit; the relay, a periodic
task, publishes whatever is still unpublished after a grace period, and re-publishes what the
broker lost. Tasks are idempotent, so the rare double publish costs one skipped run.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.broker import Broker, TaskMessage
from shared.contracts import CONTRACTS, ArgsT, Queue, ResultT, TaskContract
from shared.db import autocommit_statement
from shared.models import TaskRun, TaskState

# A run STARTED this long past the hard time limit has no live worker: Celery killed it.
DEAD_RUN_MARGIN = timedelta(seconds=30)


def new_run(
    contract: TaskContract[ArgsT, ResultT],
    args: ArgsT,
    *,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    id: uuid.UUID | None = None,  # noqa: A002 - the column's name
) -> TaskRun:
    return TaskRun(
        id=id or uuid.uuid4(),
        name=contract.name,
        kwargs=args.model_dump(mode="json"),
        state=TaskState.QUEUED,
        attempts=0,
        request_id=request_id,
        idempotency_key=idempotency_key,
    )


def message_for(run: TaskRun) -> TaskMessage:
    contract = CONTRACTS.get(run.name)
    return TaskMessage(
        id=run.id,
        name=run.name,
        kwargs=run.kwargs,
        queue=contract.queue if contract else Queue.DEFAULT,
        request_id=run.request_id,
    )


async def mark_published(db: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    await db.execute(
        update(TaskRun)
        .where(TaskRun.id.in_(ids), TaskRun.published_at.is_(None))
        .values(published_at=func.now())
    )


async def publish_committed(
    broker: Broker, sessions: async_sessionmaker[AsyncSession], runs: Sequence[TaskRun]
) -> None:
    """Publish runs whose rows are committed, then record that they were.

    Raises PublishError when the broker does not take them: the rows stay unpublished, and the
    relay picks them up after its grace period.
    """
    await broker.publish([message_for(run) for run in runs])
    async with sessions() as db:
        await autocommit_statement(db)  # one UPDATE, on a connection requests are waiting for
        await mark_published(db, [run.id for run in runs])
        await db.commit()


def _locked_oldest_first(query: Select[TaskRun], limit: int) -> Select[TaskRun]:
    # SKIP LOCKED: several relays (or a slow one and its next tick) never publish the same rows.
    return query.limit(limit).with_for_update(skip_locked=True)


async def relay_unpublished(
    db: AsyncSession, broker: Broker, *, grace: timedelta, batch_size: int
) -> int:
    """Publish one batch of rows still unpublished `grace` after their commit."""
    runs = (
        await db.scalars(
            _locked_oldest_first(
                select(TaskRun)
                .where(TaskRun.published_at.is_(None), TaskRun.created_at < func.now() - grace)
                .order_by(TaskRun.created_at),
                batch_size,
            )
        )
    ).all()
    await broker.publish([message_for(run) for run in runs])
    await mark_published(db, [run.id for run in runs])
    return len(runs)


async def repair_lost(
    db: AsyncSession,
    broker: Broker,
    *,
    repair_after: timedelta,
    retry_backoff_max: timedelta,
    time_limit: timedelta,
    max_attempts: int,
    batch_size: int,
) -> int:
    """Re-publish one batch of runs the broker lost; fail those that used up their attempts.

    Lost means: published but not started `repair_after` later (a Redis restart without
    persistence drops queued messages; a retry waits at most `retry_backoff_max` more), or
    STARTED longer ago than the hard time limit (the worker died and nobody redelivered).
    """
    now = func.now()
    runs = (
        await db.scalars(
            _locked_oldest_first(
                select(TaskRun)
                .where(
                    or_(
                        (TaskRun.state == TaskState.QUEUED)
                        & (TaskRun.published_at < now - repair_after),
                        (TaskRun.state == TaskState.RETRYING)
                        & (TaskRun.published_at < now - repair_after - retry_backoff_max),
                        (TaskRun.state == TaskState.STARTED)
                        & (TaskRun.started_at < now - time_limit - DEAD_RUN_MARGIN),
                    )
                )
                .order_by(TaskRun.created_at),
                batch_size,
            )
        )
    ).all()
    exhausted = [run.id for run in runs if run.attempts >= max_attempts]
    again = [run for run in runs if run.attempts < max_attempts]
    if exhausted:
        await db.execute(
            update(TaskRun)
            .where(TaskRun.id.in_(exhausted))
            .values(
                state=TaskState.FAILED,
                finished_at=now,
                error=f"gave up after {max_attempts} attempts: the worker never finished it",
            )
        )
    await broker.publish([message_for(run) for run in again])
    if again:
        await db.execute(
            update(TaskRun)
            .where(TaskRun.id.in_([run.id for run in again]))
            .values(state=TaskState.QUEUED, published_at=now)
        )
    return len(runs)
