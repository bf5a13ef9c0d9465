"""Task runs as the API sees them: enqueue by contract, read, list, retry."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.contracts import CONTRACTS, AnyContract
from shared.errors import InvalidInput
from shared.models import TaskRun, TaskState
from shared.runs.enqueue import enqueue as add_run
from shared.runs.errors import IdempotencyKeyReused, RunNotFound, RunNotRetryable, UnknownTask


def enqueueable_contract(name: str) -> AnyContract:
    contract = CONTRACTS.get(name)
    if contract is None or not contract.enqueueable:
        raise UnknownTask(name)
    return contract


async def enqueue(
    db: AsyncSession,
    *,
    name: str,
    kwargs: Mapping[str, object],
    request_id: str | None,
    idempotency_key: str | None,
) -> TaskRun:
    """A QUEUED run of the named task, committed, and published after the commit.

    With an idempotency key, a repeated request returns the run the first one created.
    """
    contract = enqueueable_contract(name)
    try:
        args = contract.args.model_validate(kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'kwargs'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid kwargs for {name}: {problems}") from None
    as_json = args.model_dump(mode="json")
    if idempotency_key is not None:
        existing = await _by_idempotency_key(db, idempotency_key, name, as_json)
        if existing is not None:
            return existing
    run = add_run(db, contract, args, request_id=request_id, idempotency_key=idempotency_key)
    try:
        await db.commit()
    except IntegrityError:  # a concurrent request with the same key won
        await db.rollback()
        assert idempotency_key is not None
        existing = await _by_idempotency_key(db, idempotency_key, name, as_json)
        if existing is None:
            raise
        return existing
    return run


async def _by_idempotency_key(
    db: AsyncSession, key: str, name: str, kwargs: dict[str, object]
) -> TaskRun | None:
    run = await db.scalar(select(TaskRun).where(TaskRun.idempotency_key == key))
    if run is not None and (run.name != name or run.kwargs != kwargs):
        raise IdempotencyKeyReused
    return run


async def get_run(db: AsyncSession, run_id: uuid.UUID) -> TaskRun:
    run = await db.get(TaskRun, run_id)
    if run is None:
        raise RunNotFound
    return run


async def list_runs(
    db: AsyncSession,
    *,
    name: str | None,
    state: TaskState | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[TaskRun]:
    """Newest first; `before` is the keyset cursor (created_at and id of the last row seen)."""
    query = select(TaskRun).order_by(TaskRun.created_at.desc(), TaskRun.id.desc()).limit(limit)
    if name is not None:
        query = query.where(TaskRun.name == name)
    if state is not None:
        query = query.where(TaskRun.state == state)
    if before is not None:
        query = query.where(tuple_(TaskRun.created_at, TaskRun.id) < before)
    return list((await db.scalars(query)).all())


async def retry_run(db: AsyncSession, run_id: uuid.UUID, *, request_id: str | None) -> TaskRun:
    """A new run of a FAILED run's task with the same arguments, committed and published."""
    failed = await get_run(db, run_id)
    if failed.state != TaskState.FAILED:
        raise RunNotRetryable(f"only a FAILED run can be retried; this one is {failed.state}")
    contract = CONTRACTS.get(failed.name)
    if contract is None:
        raise RunNotRetryable(f"no task named {failed.name!r} exists any more")
    try:
        args = contract.args.model_validate(failed.kwargs)
    except ValidationError:
        raise RunNotRetryable(f"its arguments no longer fit {failed.name}") from None
    run = add_run(db, contract, args, request_id=request_id)
    await db.commit()
    return run
