"""Housekeeping tasks."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import PRUNE_LOGS, PruneLogsArgs
from shared.models import FINISHED_STATES, TaskRun
from worker.decorator import task

# About 88 task runs fit in a page: 128 pages keep a batch near ten thousand rows at most.
PRUNE_PAGES = 128


@task(PRUNE_LOGS, commits=True)
async def prune_logs(args: PruneLogsArgs, db: AsyncSession) -> int:
    """Delete finished task runs older than `args.days`, a batch at a time; unfinished runs
    are never touched.

    Batches are ranges of physical pages (a TID range scan, PostgreSQL 14+), walked once from
    the first page to the last: together they read the table once, as a single DELETE would,
    while each batch commits on its own and holds its row locks briefly. Batches picked through
    an index instead (`id IN (SELECT ... LIMIT n)`, or OFFSET probes on `finished_at`) revisit
    index entries and heap pages, which makes the whole prune several times slower.
    """
    cutoff = datetime.now(UTC) - timedelta(days=args.days)
    pages = int(await db.scalar(_PAGES) or 0)
    deleted = 0
    for first in range(0, pages + 1, PRUNE_PAGES):
        connection = await db.connection()
        result = await connection.execute(
            _PRUNE_PAGES,
            {"cutoff": cutoff, "low": (first, 0), "high": (first + PRUNE_PAGES, 0)},
        )
        deleted += result.rowcount
        await db.commit()
    return deleted


_PAGES = text("SELECT pg_relation_size('task_runs') / current_setting('block_size')::int")
_PRUNE_PAGES = delete(TaskRun).where(
    text("ctid >= :low AND ctid < :high"),
    TaskRun.state.in_(FINISHED_STATES),
    TaskRun.finished_at < bindparam("cutoff"),
)
