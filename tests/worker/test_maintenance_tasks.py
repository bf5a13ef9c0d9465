import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.tasks.schemas import SAFE_EXAMPLE
from shared.contracts import PRUNE_LOGS, PruneLogsArgs
from shared.models import TaskRun, TaskState
from worker.maintenance import tasks
from worker.maintenance.tasks import prune_logs


def run(state: TaskState, age: timedelta, now: datetime) -> TaskRun:
    moment = now - age
    finished = moment if state in (TaskState.SUCCEEDED, TaskState.FAILED) else None
    return TaskRun(
        id=uuid.uuid4(),
        name="users.send_welcome_email",
        kwargs={},
        state=state,
        attempts=1,
        created_at=moment,
        started_at=moment,
        finished_at=finished,
    )


@pytest.mark.parametrize("pages", [tasks.PRUNE_PAGES, 1])
async def test_prunes_only_finished_runs_older_than_days(
    db: AsyncSession, pages: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "PRUNE_PAGES", pages)
    now = datetime.now(UTC)
    old = [run(TaskState.SUCCEEDED, timedelta(days=31, minutes=i), now) for i in range(7)]
    old += [run(TaskState.FAILED, timedelta(days=40), now) for _ in range(5)]
    # Enough rows to span several pages, so a one-page batch walks many batches.
    old += [run(TaskState.SUCCEEDED, timedelta(days=45), now) for _ in range(400)]
    keep = [
        run(TaskState.SUCCEEDED, timedelta(days=29), now),
        run(TaskState.STARTED, timedelta(days=60), now),
        run(TaskState.QUEUED, timedelta(days=60), now),
        run(TaskState.RETRYING, timedelta(days=60), now),
    ]
    db.add_all(old + keep)
    await db.flush()

    assert await prune_logs(PruneLogsArgs(days=30), db) == len(old)
    assert await prune_logs(PruneLogsArgs(days=30), db) == 0
    left = set((await db.scalars(select(TaskRun.id))).all())
    assert left == {r.id for r in keep}


async def test_prune_with_nothing_to_do(db: AsyncSession) -> None:
    assert await prune_logs(PruneLogsArgs(days=1), db) == 0
    assert await db.scalar(select(func.count()).select_from(TaskRun)) == 0


@pytest.mark.parametrize("days", [0, -1])
def test_days_below_one_is_invalid_input(days: int) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PruneLogsArgs(days=days)


async def test_the_openapi_example_prunes_nothing_younger_than_a_century(
    db: AsyncSession,
) -> None:
    """The example POST /tasks offers is safe to try: it keeps every run of the last 100 years."""
    kept = run(TaskState.SUCCEEDED, timedelta(days=365 * 99), datetime.now(UTC))
    db.add(kept)
    await db.flush()
    assert SAFE_EXAMPLE.name == PRUNE_LOGS.name
    args = PruneLogsArgs.model_validate(SAFE_EXAMPLE.kwargs)
    assert await prune_logs(args, db) == 0
    assert await db.get(TaskRun, kept.id) is not None
