"""Every run keeps its task-run row current: STARTED, then SUCCEEDED, RETRYING or FAILED.

The cost that matters is round trips (each costs the worker's one loop more CPU than the SQL
costs PostgreSQL; the statements every run executes go to asyncpg itself, worker.driver), so a
run takes two transactions:

1. The claim, committed before the work: it creates the row for runs that did not come through
   the API (beat, other producers), counts the attempt, and refuses a run that already finished
   (a duplicate delivery) or that has been delivered more than TASK_MAX_ATTEMPTS times (a poison
   message that keeps killing its worker).
2. The work and SUCCEEDED, in ONE transaction: the task's effect and its record commit
   together, so a redelivered message finds the run finished and does nothing. A task declared
   `@task(..., commits=True)` commits inside that step on its own (batch jobs, so each batch
   holds its locks briefly; the welcome email, which claims its user before the slow send):
   then SUCCEEDED commits with its last transaction only, and a run cut off before that is run
   again (such cores are written to be safe to run twice). A core not so declared cannot
   commit: its commit fails the run (CommitInCore).

   SUCCEEDED alone, after a core that left nothing uncommitted, is one autocommit statement:
   no BEGIN and COMMIT round trips around it. A core whose effect is one last UPDATE after its
   own commits (the welcome email's stamp) hands it over with `write_with_success`: that write
   and SUCCEEDED then go in ONE statement, the write fenced by the SUCCEEDED it comes with
   (or, for a record of something already done outside the database, written either way).

The claim's attempt number fences the rest. A worker that stopped renewing its messages (dead
to the broker, frozen) may come back after its run went to another worker and was claimed
again: its SUCCEEDED (or RETRYING, FAILED) then matches no row at its attempt, and its whole
transaction rolls back (RunSupersededError, outcome "superseded"), so it commits no effect.

A failure is recorded in a transaction of its own, after the work's transaction rolled back.

Quiet tasks (TaskContract.quiet: the outbox relay's ticks) run unrecorded: no row, no claim,
and a log line only when they did something or failed; their metrics count every run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Generic, TypeVar

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from pydantic import TypeAdapter
from sqlalchemy import (
    Select,
    Update,
    bindparam,
    event,
    exists,
    func,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from shared.broker import REQUEST_ID_HEADER
from shared.contracts import ArgsT, ResultT, TaskContract
from shared.db import autocommit_statement
from shared.logs import log_context
from shared.models import FINISHED_STATES, TaskRun, TaskState
from shared.settings import settings
from worker import driver
from worker.errors import ClaimHeld, RunSupersededError, describe, is_transient
from worker.metrics import (
    TASK_DURATION,
    TASKS_FAILED,
    TASKS_RETRIED,
    TASKS_STARTED,
    TASKS_SUCCEEDED,
    TASKS_SUPERSEDED,
)
from worker.runtime import get_autocommit_connection, get_task_session, run_async

log = logging.getLogger("worker.tasks")

Core = Callable[[ArgsT, AsyncSession], Awaitable[ResultT]]
R = TypeVar("R")


@dataclass(frozen=True)
class RunContext:
    id: uuid.UUID
    name: str
    kwargs: dict[str, object]
    request_id: str | None
    retries: int
    max_retries: int
    soft_time_limit: float = settings.task_soft_time_limit


@dataclass(frozen=True)
class Done(Generic[R]):
    value: R


@dataclass(frozen=True)
class RetryLater:
    error: Exception
    countdown: int


@dataclass(frozen=True)
class Failed:
    error: Exception


@dataclass(frozen=True)
class Superseded:
    """The run was claimed again since this attempt started: this attempt changed nothing."""

    error: RunSupersededError


# Built once: constructing statements costs more Python time per run than running them.
_NOW = func.now()
# The states as literals, not one expanding parameter: SQLAlchemy renders an expanding IN into
# the SQL string again at every execution, which cost more than the rest of the statement.
_UNFINISHED = TaskRun.state.not_in(
    [literal(state, TaskRun.state.type) for state in FINISHED_STATES]
)
_STILL_OURS = (_UNFINISHED, TaskRun.attempts == bindparam("attempt"))
_CLAIM = (
    insert(TaskRun)
    .values(
        id=bindparam("id"),
        name=bindparam("name"),
        kwargs=bindparam("kwargs", type_=JSONB),
        state=TaskState.STARTED,
        attempts=1,
        request_id=bindparam("request_id"),
        published_at=_NOW,
        started_at=_NOW,
    )
    .on_conflict_do_update(
        index_elements=[TaskRun.id],
        set_={
            "state": TaskState.STARTED,
            "attempts": TaskRun.attempts + 1,
            "started_at": _NOW,
            "published_at": func.coalesce(TaskRun.published_at, _NOW),
        },
        where=_UNFINISHED,  # a finished run is left alone: the statement returns no row
    )
    .returning(TaskRun.state, TaskRun.attempts, TaskRun.result, TaskRun.request_id)
)
_STORED = select(TaskRun.state, TaskRun.attempts, TaskRun.result, TaskRun.request_id).where(
    TaskRun.id == bindparam("id")
)
_SUCCEED = (
    update(TaskRun)
    .where(TaskRun.id == bindparam("run_id"), *_STILL_OURS)
    .values(
        state=TaskState.SUCCEEDED,
        result=bindparam("result", type_=JSONB),
        error=None,
        finished_at=_NOW,
    )
    .returning(TaskRun.id)
)


# SUCCEEDED as a data-modifying CTE, for a core's last write to ride with (see _with_success).
_SUCCEEDED_RUN = _SUCCEED.cte("succeeded_run")


@dataclass(frozen=True)
class Claimed:
    state: TaskState
    attempts: int
    result: object
    request_id: str | None  # the row's: Celery's retries do not carry custom headers


async def claim(connection: AsyncConnection, run: RunContext) -> Claimed:
    """Mark the run STARTED (creating its row if needed) in one statement, on a connection in
    autocommit. A finished run comes back unchanged, with its stored result."""
    params = {"id": run.id, "name": run.name, "kwargs": run.kwargs, "request_id": run.request_id}
    rows = await driver.fetch(connection, _CLAIM, params)
    if not rows:
        rows = await driver.fetch(connection, _STORED, {"id": run.id})
    [row] = rows
    return Claimed(TaskState(row["state"]), row["attempts"], row["result"], row["request_id"])


async def record_success(db: AsyncSession, run_id: uuid.UUID, attempt: int, result: object) -> None:
    """In the work's own transaction, so the effect and its record commit together. Raises
    RunSupersededError, so that the effect rolls back, when the run is no longer at `attempt`.

    When the core left nothing uncommitted, SUCCEEDED (with the core's last write, if it handed
    one over) is a statement of its own in autocommit: atomic by itself, and two round trips
    (BEGIN, COMMIT) cheaper than a transaction around it."""
    last: LastWrite | None = db.info.pop(_LAST_WRITE, None)
    connection = await _connection_for(db)
    params = {"run_id": run_id, "attempt": attempt, "result": result}
    if last is None:
        if len(await driver.fetch(connection, _SUCCEED, params)) != 1:
            raise RunSupersededError(attempt)
        return
    [counts] = await driver.fetch(
        connection, _with_success(last.statement, last.fenced), {**last.params, **params}
    )
    if counts["recorded"] != 1:
        raise RunSupersededError(attempt)
    if counts["written"] == 0:
        log.warning(last.unmatched)


async def _connection_for(db: AsyncSession) -> AsyncConnection:
    if not db.in_transaction():
        await autocommit_statement(db)  # nothing uncommitted to commit with the record
    return await db.connection()


# Set in a run's Session.info: None until the core hands over its last write.
_LAST_WRITE = "worker.last_write"


def carry_last_write(db: AsyncSession) -> None:
    """Make `db` a run's session: a last write handed over on it (`write_with_success`) waits
    for `record_success`."""
    db.info[_LAST_WRITE] = None


@dataclass(frozen=True)
class LastWrite:
    statement: Update
    params: Mapping[str, object]
    unmatched: str
    fenced: bool


async def write_with_success(
    db: AsyncSession,
    statement: Update,
    params: Mapping[str, object],
    *,
    unmatched: str,
    fenced: bool = True,
) -> None:
    """Hand the core's last write (an UPDATE without RETURNING, built once at import) to the
    runtime: it runs in the statement that records the run SUCCEEDED, and only if that record
    is written (a superseded attempt writes nothing), so a core that committed its earlier
    steps pays one round trip for its effect and its record instead of four. The core must
    not touch the session after it. `unmatched` is logged as a warning when the write matches
    no row (the run still succeeds, as the core says by returning).

    `fenced=False` is for a write that records something the attempt did outside the database
    and cannot undo (the welcome email's stamp: the email went out), guarded by a claim of its
    own: it is then written by that statement even when the attempt was superseded, so the
    run that superseded it finds the fact recorded instead of doing it again. It commits so
    when the core committed everything before it (the statement then runs in autocommit);
    otherwise the superseded attempt's rollback takes it too.

    On a session that records no run (a test's, or any caller of the core), the write runs at
    once, in that session's transaction."""
    if _LAST_WRITE not in db.info:
        connection = await db.connection()
        if (await connection.execute(statement, params)).rowcount == 0:
            log.warning(unmatched)
        return
    if db.info[_LAST_WRITE] is not None:
        raise RuntimeError("a core hands over one last write")
    db.info[_LAST_WRITE] = LastWrite(statement, params, unmatched, fenced)


@lru_cache(maxsize=64)
def _with_success(statement: Update, fenced: bool) -> Select[int, int]:
    """WITH succeeded_run AS (UPDATE task_runs ... RETURNING id), last_write AS (UPDATE ...
    AND EXISTS (SELECT FROM succeeded_run) RETURNING 1) SELECT both counts: one statement, so
    the write commits exactly when SUCCEEDED does (unfenced: without the EXISTS)."""
    if fenced:
        statement = statement.where(exists(_SUCCEEDED_RUN.select()))
    write = statement.returning(literal_column("1")).cte("last_write")
    return select(
        select(func.count()).select_from(_SUCCEEDED_RUN).scalar_subquery().label("recorded"),
        select(func.count()).select_from(write).scalar_subquery().label("written"),
    )


async def record(
    db: AsyncSession, run_id: uuid.UUID, attempt: int, state: TaskState, **values: object
) -> None:
    """Move the run to `state` if it is still unfinished and at `attempt`, else raise
    RunSupersededError. A finished run is never rewritten: when a duplicate delivery runs beside
    the original, the first outcome recorded stays."""
    if state in FINISHED_STATES:
        values["finished_at"] = _NOW
    result = await db.execute(
        update(TaskRun).where(TaskRun.id == run_id, *_STILL_OURS).values(state=state, **values),
        {"attempt": attempt},
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult
        raise RunSupersededError(attempt)


@cache
def _results(contract: TaskContract[ArgsT, ResultT]) -> TypeAdapter[ResultT]:
    return TypeAdapter(contract.result)


Outcome = Done[R] | RetryLater | Failed | Superseded


# Set in a session's info while a core that may not commit runs on it.
_NO_COMMIT = "worker.core_may_not_commit"


class CommitInCore(RuntimeError):
    """A core committed though its @task does not declare `commits=True`."""


def _refuse_commit_in_core(session: Session) -> None:
    name = session.info.get(_NO_COMMIT)
    if name is not None:
        raise CommitInCore(
            f"{name}: the core committed, so its effect would not commit with its record; "
            "declare @task(..., commits=True) if it commits on purpose"
        )


def install() -> None:
    """Enforce `commits` on every session (the guard is a dict lookup per commit)."""
    if not event.contains(Session, "before_commit", _refuse_commit_in_core):
        event.listen(Session, "before_commit", _refuse_commit_in_core)


async def execute(
    run: RunContext,
    contract: TaskContract[ArgsT, ResultT],
    core: Core[ArgsT, ResultT],
    commits: bool = False,
) -> Outcome[ResultT]:
    try:
        async with get_autocommit_connection() as connection:
            claimed = await claim(connection, run)
    except Exception as exc:
        # The database is unreachable before the run even started: retry the message like
        # any transient failure (nothing can be recorded now). Raising would ack it, and the
        # run would wait for the relay's repair (OUTBOX_REPAIR_AFTER) instead.
        if is_transient(exc) and run.retries < run.max_retries:
            retry = RetryLater(exc, _backoff(run.retries))
            with log_context(task_id=str(run.id), task_name=run.name, request_id=run.request_id):
                TASKS_RETRIED.labels(run.name).inc()
                log.warning(
                    "task not started: the database is unreachable",
                    extra={"outcome": "retrying", "error": type(exc).__name__,
                           "retry_in_s": retry.countdown},
                )  # fmt: skip
            return retry
        raise
    with log_context(
        task_id=str(run.id), task_name=run.name, request_id=claimed.request_id or run.request_id
    ):
        if claimed.state in FINISHED_STATES:
            log.info("task skipped: run already %s (a duplicate delivery)", claimed.state)
            return Done(_results(contract).validate_python(claimed.result))
        log.info("task started", extra={"attempt": claimed.attempts})
        TASKS_STARTED.labels(run.name).inc()
        started = time.perf_counter()
        try:
            outcome = await _run_claimed(run, claimed, contract, core, commits)
        except asyncio.CancelledError:
            # Cancelled by the worker (the broker connection was lost, or the process stops):
            # its transaction rolled back, and its message will be delivered again.
            log.warning(
                "task cancelled",
                extra={"duration_ms": round((time.perf_counter() - started) * 1000, 2),
                       "outcome": "cancelled"},
            )  # fmt: skip
            raise
        _report(run.name, outcome, time.perf_counter() - started)
        return outcome


async def _run_claimed(
    run: RunContext,
    claimed: Claimed,
    contract: TaskContract[ArgsT, ResultT],
    core: Core[ArgsT, ResultT],
    commits: bool,
) -> Outcome[ResultT]:
    attempt = claimed.attempts
    limit = asyncio.timeout(run.soft_time_limit)
    try:
        if attempt > settings.task_max_attempts:
            error = RuntimeError(f"delivered {attempt} times without finishing: not run again")
            async with get_task_session() as db:
                await record(db, run.id, attempt, TaskState.FAILED, error=describe(error))
            return Failed(error)
        async with get_task_session() as db:
            args = contract.args.model_validate(run.kwargs)
            # On the shared loop the core is cancelled at its soft limit; the other runs in
            # flight go on. The effect and SUCCEEDED commit together, or neither does.
            if not commits:
                db.info[_NO_COMMIT] = run.name
            carry_last_write(db)
            async with limit:
                value = await core(args, db)
            db.info.pop(_NO_COMMIT, None)
            result = _results(contract).dump_python(value, mode="json")
            await record_success(db, run.id, attempt, result)
        return Done(value)
    except RunSupersededError as superseded:
        return Superseded(superseded)
    except Exception as caught:
        exc: Exception = caught
        retryable = is_transient(exc)
        if limit.expired():
            exc = SoftTimeLimitExceeded(f"cut off after its time limit of {run.soft_time_limit} s")
            retryable = contract.retry_on_time_limit
        outcome: RetryLater | Failed
        if retryable and run.retries < run.max_retries:
            outcome, state, extra = (
                RetryLater(exc, _retry_delay(exc, run.retries)),
                TaskState.RETRYING,
                {"published_at": func.now()},
            )
        else:
            outcome, state, extra = Failed(exc), TaskState.FAILED, {}
        try:
            async with get_task_session() as db:
                await record(db, run.id, attempt, state, error=describe(exc), **extra)
        except RunSupersededError as superseded:
            # The failure may be the fence's doing (PostgreSQL ended the session of a frozen
            # worker): either way the run belongs to another attempt, so no retry from here.
            return Superseded(superseded)
        except Exception as record_error:  # the database may be what failed; the relay repairs
            exc.add_note(f"could not record {state}: {describe(record_error)}")
        return outcome


def _report(task: str, outcome: Outcome[R], seconds: float) -> None:
    """One log line and the metrics per finished attempt. Errors are named, not dumped: an
    exception's text may quote task arguments."""
    TASK_DURATION.labels(task).observe(seconds)
    fields: dict[str, object] = {"duration_ms": round(seconds * 1000, 2)}
    if isinstance(outcome, Done):
        TASKS_SUCCEEDED.labels(task).inc()
        log.info("task finished", extra={**fields, "outcome": "succeeded"})
    elif isinstance(outcome, Superseded):
        TASKS_SUPERSEDED.labels(task).inc()
        log.warning(
            "task finished",
            extra={**fields, "outcome": "superseded", "error": type(outcome.error).__name__},
        )
    elif isinstance(outcome, RetryLater):
        TASKS_RETRIED.labels(task).inc()
        log.warning(
            "task finished",
            extra={**fields, "outcome": "retrying", "error": type(outcome.error).__name__,
                   "retry_in_s": outcome.countdown},
        )  # fmt: skip
    else:
        TASKS_FAILED.labels(task).inc()
        log.error(
            "task finished",
            extra={**fields, "outcome": "failed", "error": type(outcome.error).__name__},
        )


def _retry_delay(exc: Exception, retries: int) -> int:
    """The backoff; for a claim held by another run, 1, 2, 4... seconds, never past the
    claim's expiry: its holder usually finishes in a moment, and one that died frees the user
    within the retries (1 + 2 + 4 + 8 + 16 s outlast SMTP_TIMEOUT + CLAIM_MARGIN by default)."""
    if isinstance(exc, ClaimHeld):
        doubling: int = 2**retries
        return max(1, min(exc.retry_after, doubling))
    return _backoff(retries)


def _backoff(retries: int) -> int:
    return get_exponential_backoff_interval(
        factor=2, retries=retries, maximum=settings.task_retry_backoff_max, full_jitter=True
    )


def run_recorded(
    task: Task[Any, Any],
    contract: TaskContract[ArgsT, ResultT],
    core: Core[ArgsT, ResultT],
    kwargs: dict[str, object],
    commits: bool = False,
) -> ResultT:
    """The body of every recorded task: run the core with its run recorded, then let Celery
    retry or fail the message according to the outcome."""
    request = task.request
    run = RunContext(
        id=uuid.UUID(request.id),
        name=contract.name,
        kwargs=kwargs,
        request_id=getattr(request, REQUEST_ID_HEADER, None),
        retries=request.retries or 0,
        max_retries=task.max_retries or 0,
        soft_time_limit=contract.soft_time_limit or settings.task_soft_time_limit,
    )
    outcome = run_async(execute(run, contract, core, commits))
    if isinstance(outcome, RetryLater):
        raise task.retry(exc=outcome.error, countdown=outcome.countdown)
    if isinstance(outcome, Failed):
        raise outcome.error
    if isinstance(outcome, Superseded):
        # Acked without a retry or a failure: the run's current attempt records its outcome.
        raise Ignore(str(outcome.error))
    return outcome.value


def run_unrecorded(
    task: Task[Any, Any],
    contract: TaskContract[ArgsT, ResultT],
    core: Core[ArgsT, ResultT],
    kwargs: dict[str, object],
) -> ResultT:
    """The body of a quiet task: the core in a task session (it may commit), no run row, no
    retry (the next tick is one). Logs when the result says it did something, or it failed."""
    with log_context(task_id=task.request.id, task_name=contract.name):
        TASKS_STARTED.labels(contract.name).inc()
        started = time.perf_counter()
        try:
            value = run_async(_run_quietly(contract, core, kwargs))
        except Exception as exc:
            _report(contract.name, Failed(exc), time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        TASK_DURATION.labels(contract.name).observe(seconds)
        TASKS_SUCCEEDED.labels(contract.name).inc()
        if value:
            log.info(
                "task finished",
                extra={"duration_ms": round(seconds * 1000, 2), "outcome": "succeeded",
                       "result": _results(contract).dump_python(value, mode="json")},
            )  # fmt: skip
        return value


async def _run_quietly(
    contract: TaskContract[ArgsT, ResultT], core: Core[ArgsT, ResultT], kwargs: dict[str, object]
) -> ResultT:
    limit = contract.soft_time_limit or settings.task_soft_time_limit
    async with get_task_session() as db, asyncio.timeout(limit):
        return await core(contract.args.model_validate(kwargs), db)
