"""Enqueue on commit: a service adds a run in its transaction, and the run is published after
that transaction commits, by a hook on the session, with no code in the route.

    run = enqueue(db, SEND_WELCOME_EMAIL, SendWelcomeEmailArgs(user_id=user.id))
    await db.commit()  # the row commits with the rest; then the hook hands the run to publish

The API installs the hook on its sessions (`publish_on_commit`, in api.main) with the
background publisher's `submit`, which never blocks the request. The hook publishes every run
the session flushed as a new object, so a service that adds a `TaskRun` itself (not through
`enqueue`) is published too: no route or service can forget to publish. A run whose transaction
rolls back is forgotten, never published. A session without the hook (a worker task, a script)
still commits the row: the outbox relay publishes it after OUTBOX_GRACE_SECONDS.

Statements that must write the run in the same statement as the row it refers to (POST /users:
the user and its welcome run in one round trip) use `insert_run`, which builds the run's
INSERT from the contract's argument fields, then `publish_after_commit` with the validated
arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel
from sqlalchemy import Insert, Text, bindparam, cast, event, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement, FromClause

from shared.contracts import ArgsT, ResultT, TaskContract
from shared.models import TaskRun
from shared.runs.outbox import new_run

Publish = Callable[[Sequence[TaskRun]], None]

# Keys in Session.info: the hook a session was made with, and the runs waiting for its commit.
_PUBLISH = "shared.runs.publish"
_PENDING = "shared.runs.pending"


def enqueue(
    db: AsyncSession,
    contract: TaskContract[ArgsT, ResultT],
    args: ArgsT | Mapping[str, object],
    *,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> TaskRun:
    """Add a QUEUED run of `contract` to the session's transaction, its arguments validated by
    the contract (a pydantic ValidationError when they do not fit). Published after commit."""
    validated = validate_args(contract, args)
    run = new_run(contract, validated, request_id=request_id, idempotency_key=idempotency_key)
    db.add(run)  # published after the commit: the hook sees it flushed as a new row
    return run


def validate_args(
    contract: TaskContract[ArgsT, ResultT], args: BaseModel | Mapping[str, object]
) -> ArgsT:
    if isinstance(args, contract.args):
        return args
    if isinstance(args, BaseModel):
        raise TypeError(
            f"{contract.name} takes {contract.args.__name__}, not {type(args).__name__}"
        )
    return contract.args.model_validate(args)


def publish_after_commit(db: AsyncSession, run: TaskRun) -> None:
    """Publish `run` once the session's transaction commits: for a run written by a statement
    of the caller's own (see `insert_run`), which the session does not see as an object."""
    pending: list[TaskRun] = db.info.setdefault(_PENDING, [])
    pending.append(run)


def insert_run(
    contract: TaskContract[ArgsT, ResultT], source: FromClause, **args: ColumnElement[object]
) -> Insert:
    """An INSERT of one QUEUED run of `contract` per row of `source` (a CTE, typically), its
    kwargs built from `args`, one column expression per field of the contract's arguments.
    Binds `run_id` and `request_id`. Check the values with `validate_args` before committing."""
    fields = set(contract.args.model_fields)
    if set(args) != fields:
        raise TypeError(
            f"{contract.name} takes the fields {sorted(fields)} ({contract.args.__name__}); "
            f"got {sorted(args)}"
        )
    kwargs = func.jsonb_build_object(
        *(part for name, value in args.items() for part in (cast(literal(name), Text), value))
    )
    rows = select(
        bindparam("run_id", type_=TaskRun.id.type),
        literal(contract.name, TaskRun.name.type),
        kwargs,
        bindparam("request_id", type_=TaskRun.request_id.type),
    ).select_from(source)
    return insert(TaskRun).from_select(["id", "name", "kwargs", "request_id"], rows)


def publish_on_commit(sessions: async_sessionmaker[AsyncSession], publish: Publish) -> None:
    """Every session `sessions` makes hands its enqueued runs to `publish` after it commits."""
    sessions.configure(info={_PUBLISH: publish})
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)


def _after_flush(session: Session, _: object) -> None:
    # Still the pre-flush state here: `session.new` holds what this flush inserted.
    if _PUBLISH in session.info:
        runs = [obj for obj in session.new if isinstance(obj, TaskRun)]
        if runs:
            session.info.setdefault(_PENDING, []).extend(runs)


def _after_commit(session: Session) -> None:
    pending: list[TaskRun] | None = session.info.pop(_PENDING, None)
    publish: Publish | None = session.info.get(_PUBLISH)
    if pending and publish is not None:
        publish(list({run.id: run for run in pending}.values()))


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
