"""Enqueue on commit (shared.runs.enqueue), on a committed database: the hook must see real
commits and rollbacks, which the rolled-back `db` session's savepoints only imitate."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.contracts import PRUNE_LOGS, SEND_WELCOME_EMAIL, PruneLogsArgs, SendWelcomeEmailArgs
from shared.db import make_engine, make_sessionmaker
from shared.models import TaskRun, User
from shared.runs.enqueue import enqueue, insert_run, publish_on_commit
from shared.runs.outbox import new_run
from shared.users.service import _NEW_USER
from tests.environment import TEST_DATABASE_URL
from tests.fixtures.api import CLIENT
from tests.fixtures.waiting import eventually


@pytest.fixture
async def committed(test_database: object) -> AsyncIterator[AsyncEngine]:
    """An engine whose commits are real; what the test committed is deleted afterwards."""
    engine = make_engine("test", pool_size=2, url=TEST_DATABASE_URL)
    yield engine
    await engine.dispose()


class Published:
    def __init__(self) -> None:
        self.runs: list[TaskRun] = []

    def __call__(self, runs: Sequence[TaskRun]) -> None:
        self.runs.extend(runs)


@pytest.fixture
def published(committed: AsyncEngine) -> tuple[async_sessionmaker[AsyncSession], Published]:
    sessions = make_sessionmaker(committed)
    publish = Published()
    publish_on_commit(sessions, publish)
    return sessions, publish


async def _delete_runs(engine: AsyncEngine, ids: list[uuid.UUID]) -> None:
    async with engine.begin() as connection:
        await connection.execute(delete(TaskRun).where(TaskRun.id.in_(ids)))


async def test_a_committed_run_is_published_after_the_commit_and_a_rolled_back_one_never(
    committed: AsyncEngine, published: tuple[async_sessionmaker[AsyncSession], Published]
) -> None:
    sessions, publish = published
    async with sessions() as db:
        dropped = enqueue(db, PRUNE_LOGS, {"days": 7})
        await db.flush()  # written, then undone: a flush is not a commit
        assert publish.runs == []
        await db.rollback()
        kept = enqueue(db, PRUNE_LOGS, PruneLogsArgs(days=30), request_id="req-1")
        assert publish.runs == []  # nothing before the commit
        await db.commit()
    try:
        assert [run.id for run in publish.runs] == [kept.id]
        async with sessions() as db:
            stored = await db.get(TaskRun, kept.id)
            assert stored is not None
            assert stored.kwargs == {"days": 30}
            assert stored.request_id == "req-1"
            assert await db.get(TaskRun, dropped.id) is None
        # A later commit of the same session publishes nothing again.
        async with sessions() as db:
            await db.commit()
        assert len(publish.runs) == 1
    finally:
        await _delete_runs(committed, [kept.id])


async def test_a_run_added_without_enqueue_is_published_too(
    committed: AsyncEngine, published: tuple[async_sessionmaker[AsyncSession], Published]
) -> None:
    """A service that writes its run itself cannot forget to publish it."""
    sessions, publish = published
    run = new_run(PRUNE_LOGS, PruneLogsArgs(days=3))
    async with sessions() as db:
        db.add(run)
        await db.commit()
    try:
        assert [r.id for r in publish.runs] == [run.id]
    finally:
        await _delete_runs(committed, [run.id])


async def test_arguments_are_checked_against_the_contract(
    published: tuple[async_sessionmaker[AsyncSession], Published],
) -> None:
    sessions, publish = published
    async with sessions() as db:
        with pytest.raises(ValidationError, match="days"):
            enqueue(db, PRUNE_LOGS, {"days": "30"})  # strict: a string is not an int
        with pytest.raises(TypeError, match="takes PruneLogsArgs, not SendWelcomeEmailArgs"):
            enqueue(db, PRUNE_LOGS, SendWelcomeEmailArgs(user_id=1))  # type: ignore[misc]  # mypy refuses it too
        await db.commit()
    assert publish.runs == []


def test_a_run_insert_names_exactly_the_contracts_fields() -> None:
    with pytest.raises(TypeError, match=r"takes the fields \['user_id'\]"):
        insert_run(SEND_WELCOME_EMAIL, _NEW_USER, id=_NEW_USER.c.id)


async def test_a_route_that_commits_a_run_gets_it_published_without_calling_the_publisher(
    api_app: FastAPI, committed: AsyncEngine, redis: Redis
) -> None:
    """POST /users on the real app with its own sessions (no rolled-back override): the route
    never calls the publisher, the hook does; the message is on the queue and the row says so.
    A sign-up rolled back (the address is taken) publishes nothing."""
    address = f"hook-{uuid.uuid4().hex[:8]}@example.com"
    transport = ASGITransport(app=api_app)
    async with AsyncClient(transport=transport, base_url="http://api.test") as http:
        created = await http.post(
            "/users", json={"email": address, "full_name": "Hook"}, headers=CLIENT
        )
        taken = await http.post(
            "/users", json={"email": address, "full_name": "Again"}, headers=CLIENT
        )
    assert created.status_code == 201, created.text
    assert taken.status_code == 409
    run_id = created.json()["welcome_run_id"]
    try:

        async def published_and_marked() -> bool:
            async with committed.connect() as connection:
                stamp = await connection.scalar(
                    select(TaskRun.published_at).where(TaskRun.id == uuid.UUID(run_id))
                )
            return stamp is not None

        await eventually(published_and_marked, 10, "the welcome run marked published")
        queued = [json.loads(raw) for raw in await redis.lrange("default", 0, -1)]
        assert [m["headers"]["id"] for m in queued] == [run_id]
        assert queued[0]["headers"]["task"] == SEND_WELCOME_EMAIL.name
    finally:
        async with committed.begin() as connection:
            await connection.execute(delete(TaskRun).where(TaskRun.id == uuid.UUID(run_id)))
            await connection.execute(delete(User).where(User.email == address))
