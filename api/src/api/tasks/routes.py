from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Header, HTTPException, Query, status
from pydantic import StringConstraints, TypeAdapter
from redis.exceptions import RedisError

from api.auth import AdminToken, AnyToken
from api.deps import AppResources, DbSession
from api.errors import error_responses
from api.middleware import current_request_id
from api.pagination import Cursor, InvalidCursor, Limit, decode_cursor, encode_cursor
from api.tasks.schemas import (
    SAFE_EXAMPLE,
    ScheduleOut,
    TaskAcceptedOut,
    TaskEnqueueIn,
    TaskRunOut,
    TaskRunPage,
    TaskTypeOut,
)
from api.text import Printable
from shared.beat import read_schedule
from shared.contracts import CONTRACTS
from shared.models import TaskState
from shared.runs import service
from shared.runs.errors import RunNotFound

router = APIRouter(tags=["tasks"])

# Both reach PostgreSQL, which refuses a NUL in text: control characters are a 422, not a 500.
# The length is checked before the characters, so a long value reads "string_too_long".
PrintableStr = Annotated[str, StringConstraints(max_length=200), Printable]

IdempotencyKey = Annotated[
    PrintableStr | None,
    Header(
        alias="Idempotency-Key",
        description="Repeat a request with the same key to get the same run, not a new one",
    ),
]


def _run_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise RunNotFound from None  # an id that is not a UUID names no run


@router.post(
    "/tasks",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(401, 403, 409, 413, 415, 422),
)
async def enqueue_task(
    body: Annotated[
        TaskEnqueueIn,
        Body(
            openapi_examples={
                "prune": {
                    "summary": "Prune runs finished over a century ago (safe to try)",
                    "value": SAFE_EXAMPLE.model_dump(mode="json"),
                }
            }
        ),
    ],
    db: DbSession,
    resources: AppResources,
    _: AdminToken,
    idempotency_key: IdempotencyKey = None,
) -> TaskAcceptedOut:
    """Enqueue a task by name, with arguments checked against its contract (GET /task-types
    lists the tasks and their arguments)."""
    run = await service.enqueue(
        db,
        name=body.name,
        kwargs=body.kwargs,
        request_id=current_request_id(),
        idempotency_key=idempotency_key,
    )
    return TaskAcceptedOut.model_validate(run)


@router.post(
    "/tasks/{run_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(401, 403, 404, 409),
)
async def retry_task(
    run_id: str, db: DbSession, resources: AppResources, _: AdminToken
) -> TaskAcceptedOut:
    """Run a FAILED run's task again, with the same arguments, as a new run."""
    run = await service.retry_run(db, _run_id(run_id), request_id=current_request_id())
    return TaskAcceptedOut.model_validate(run)


@router.get("/tasks/{run_id}", responses=error_responses(401, 404))
async def read_task(run_id: str, db: DbSession, _: AnyToken) -> TaskRunOut:
    """A run's state and outcome. Run ids are random UUIDs, so client tokens may read them."""
    return TaskRunOut.model_validate(await service.get_run(db, _run_id(run_id)))


@router.get("/tasks", responses=error_responses(401, 403, 422))
async def list_tasks(
    db: DbSession,
    _: AdminToken,
    name: Annotated[PrintableStr | None, Query()] = None,
    state: Annotated[TaskState | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> TaskRunPage:
    """Runs, newest first, a page at a time."""
    before = _run_cursor(cursor) if cursor else None
    runs = await service.list_runs(db, name=name, state=state, before=before, limit=limit)
    next_cursor = (
        encode_cursor(runs[-1].created_at.isoformat(), str(runs[-1].id))
        if len(runs) == limit
        else None
    )
    return TaskRunPage(items=[TaskRunOut.model_validate(r) for r in runs], next_cursor=next_cursor)


def _run_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    key = decode_cursor(cursor)
    try:
        created_at, run_id = key
        moment = datetime.fromisoformat(str(created_at))
        if moment.tzinfo is None:
            raise ValueError
        # In UTC, as asyncpg sends it: an offset can push a date past year 1 or 9999, which
        # Python cannot represent (OverflowError), and asyncpg's would be a 500.
        moment = moment.astimezone(UTC)
        return moment, uuid.UUID(str(run_id))
    except (ValueError, OverflowError):
        raise InvalidCursor from None


@router.get("/schedules", responses=error_responses(401, 403))
async def list_schedules(resources: AppResources, _: AdminToken) -> list[ScheduleOut]:
    """Beat's entries, with when each next falls due and when beat last sent it (UTC). The
    schedule and the next time come from the code, so they hold with no beat running; the last
    send is what beat recorded in Redis."""
    try:
        entries = await read_schedule(resources.redis)
    except (RedisError, OSError, TimeoutError):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the broker (Redis) is unavailable"
        ) from None
    return [ScheduleOut(**vars(entry)) for entry in entries]


def _task_types() -> list[TaskTypeOut]:
    return [
        TaskTypeOut(
            name=contract.name,
            queue=contract.queue.value,
            description=contract.description,
            args_schema=contract.args.model_json_schema(),
            result_schema=TypeAdapter(contract.result).json_schema(),
        )
        for contract in sorted(CONTRACTS.values(), key=lambda c: c.name)
        if contract.enqueueable
    ]


@router.get("/task-types", responses=error_responses(401, 403))
async def list_task_types(_: AdminToken) -> list[TaskTypeOut]:
    """Every task POST /tasks accepts: its queue, what it does, and the JSON schemas of its
    arguments (`kwargs`) and of its result."""
    return _TASK_TYPES


_TASK_TYPES = _task_types()  # the contracts are fixed for the life of the process
