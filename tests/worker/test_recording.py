"""A core's last write handed to the runtime (`write_with_success`) commits exactly when its
run's SUCCEEDED does: on a real session, rolled back after each test."""

import logging
import uuid

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import SEND_WELCOME_EMAIL
from shared.models import TaskRun, TaskState, User
from tests.fixtures.users import add_user
from worker.errors import RunSupersededError
from worker.recording import carry_last_write, record_success, write_with_success
from worker.users.tasks import _STAMP

TAKEN_OVER = "welcome email sent after its claim expired and was taken over"


async def started_run(db: AsyncSession, attempts: int) -> uuid.UUID:
    run_id = uuid.uuid4()
    await db.execute(
        insert(TaskRun).values(
            id=run_id, name=SEND_WELCOME_EMAIL.name, kwargs={}, state=TaskState.STARTED,
            attempts=attempts,
        )
    )  # fmt: skip
    return run_id


async def claimed_user(db: AsyncSession, claim: uuid.UUID) -> User:
    return await add_user(db, welcome_email_claim=claim)


async def state_of(db: AsyncSession, run_id: uuid.UUID, user: User) -> tuple[object, ...]:
    run = await db.get_one(TaskRun, run_id, populate_existing=True)
    sent = await db.scalar(select(User.welcome_email_sent_at).where(User.id == user.id))
    return run.state, run.result, sent is not None


async def test_the_last_write_waits_for_the_record_and_commits_with_it(db: AsyncSession) -> None:
    claim = uuid.uuid4()
    run_id, user = await started_run(db, attempts=1), await claimed_user(db, claim)
    carry_last_write(db)
    await write_with_success(db, _STAMP, {"user_id": user.id, "claim": claim}, unmatched=TAKEN_OVER)
    assert await state_of(db, run_id, user) == (TaskState.STARTED, None, False)

    await record_success(db, run_id, 1, True)
    assert await state_of(db, run_id, user) == (TaskState.SUCCEEDED, True, True)


async def test_a_superseded_attempt_writes_neither(db: AsyncSession) -> None:
    """The run was claimed again (attempt 2) while attempt 1 sent: attempt 1 stamps nothing."""
    claim = uuid.uuid4()
    run_id, user = await started_run(db, attempts=2), await claimed_user(db, claim)
    carry_last_write(db)
    await write_with_success(db, _STAMP, {"user_id": user.id, "claim": claim}, unmatched=TAKEN_OVER)
    with pytest.raises(RunSupersededError):
        await record_success(db, run_id, 1, True)
    assert await state_of(db, run_id, user) == (TaskState.STARTED, None, False)


async def test_an_unfenced_write_is_made_by_a_superseded_attempt_too(db: AsyncSession) -> None:
    """Attempt 1 sent the email, then a duplicate delivery claimed the run (attempt 2): the
    stamp still records the email, so attempt 2 finds it sent instead of sending again."""
    claim = uuid.uuid4()
    run_id, user = await started_run(db, attempts=2), await claimed_user(db, claim)
    carry_last_write(db)
    params = {"user_id": user.id, "claim": claim}
    await write_with_success(db, _STAMP, params, unmatched=TAKEN_OVER, fenced=False)
    with pytest.raises(RunSupersededError):
        await record_success(db, run_id, 1, True)
    assert await state_of(db, run_id, user) == (TaskState.STARTED, None, True)


async def test_a_write_matching_no_row_is_logged_and_the_run_succeeds(
    db: AsyncSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The user's claim expired and another run took it over: this run's stamp matches no row
    (the other run stamps), and this run, which did send, succeeds all the same."""
    run_id, user = await started_run(db, attempts=1), await claimed_user(db, uuid.uuid4())
    carry_last_write(db)
    await write_with_success(
        db, _STAMP, {"user_id": user.id, "claim": uuid.uuid4()}, unmatched=TAKEN_OVER
    )
    with caplog.at_level(logging.WARNING, "worker.tasks"):
        await record_success(db, run_id, 1, True)
    assert await state_of(db, run_id, user) == (TaskState.SUCCEEDED, True, False)
    assert TAKEN_OVER in caplog.messages


async def test_off_a_run_the_last_write_runs_at_once(db: AsyncSession) -> None:
    """A core called on a session of its caller's (a test's, a script's) writes at once."""
    claim = uuid.uuid4()
    user = await claimed_user(db, claim)
    await write_with_success(db, _STAMP, {"user_id": user.id, "claim": claim}, unmatched=TAKEN_OVER)
    assert await db.scalar(select(User.welcome_email_sent_at).where(User.id == user.id))


async def test_a_core_hands_over_one_last_write(db: AsyncSession) -> None:
    user = await claimed_user(db, uuid.uuid4())
    carry_last_write(db)
    params = {"user_id": user.id, "claim": uuid.uuid4()}
    await write_with_success(db, _STAMP, params, unmatched=TAKEN_OVER)
    with pytest.raises(RuntimeError, match="one last write"):
        await write_with_success(db, _STAMP, params, unmatched=TAKEN_OVER)
