"""What the fault tests share: a Redis of the test's own, users and runs written the way the
API writes them, and the questions they ask the database afterwards."""

from __future__ import annotations

import uuid
from collections import Counter
from email.message import Message

from redis.asyncio import Redis
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import Broker, TaskMessage
from shared.contracts import SEND_WELCOME_EMAIL, SendWelcomeEmailArgs
from shared.models import TaskRun, TaskState, User
from shared.runs.outbox import message_for, new_run
from tests.fixtures.processes import Processes


def own_redis(processes: Processes) -> tuple[Redis, int]:
    """A redis-server for this test only (so the test may stop it), set for every process
    started afterwards; returns a client of it and its port."""
    _, port = processes.redis_server()
    url = f"redis://127.0.0.1:{port}/0"
    processes.env["REDIS_URL"] = url
    return Redis.from_url(url), port


async def create_users(engine: AsyncEngine, prefix: str, count: int) -> list[int]:
    async with engine.begin() as conn:
        ids = await conn.scalars(
            insert(User)
            .values(
                [{"email": f"{prefix}{i}@example.com", "full_name": f"U {i}"} for i in range(count)]
            )
            .returning(User.id)
        )
        return list(ids)


async def queue_welcome_runs(
    engine: AsyncEngine, redis: Redis, user_ids: list[int]
) -> list[uuid.UUID]:
    """As the API does it: the run rows committed first, then published and marked so."""
    runs = [new_run(SEND_WELCOME_EMAIL, SendWelcomeEmailArgs(user_id=u)) for u in user_ids]
    async with engine.begin() as conn:
        await conn.execute(
            insert(TaskRun),
            [
                {"id": r.id, "name": r.name, "kwargs": r.kwargs, "state": r.state, "attempts": 0}
                for r in runs
            ],
        )
    await Broker(redis, timeout=10).publish([message_for(r) for r in runs])
    async with engine.begin() as conn:
        await conn.execute(
            update(TaskRun)
            .where(TaskRun.id.in_([r.id for r in runs]))
            .values(published_at=func.now())
        )
    return [r.id for r in runs]


async def publish(redis: Redis, name: str, **kwargs: object) -> uuid.UUID:
    message = TaskMessage(uuid.uuid4(), name, kwargs, "default")
    await Broker(redis, timeout=5).publish([message])
    return message.id


async def count_runs(engine: AsyncEngine, *where: object) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(TaskRun).where(*where))  # type: ignore[arg-type]
    return int(count or 0)


async def unfinished_runs(engine: AsyncEngine) -> int:
    return await count_runs(engine, TaskRun.state.not_in((TaskState.SUCCEEDED,)))


async def runs_by_id(engine: AsyncEngine, ids: list[uuid.UUID]) -> dict[uuid.UUID, TaskRun]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(TaskRun).where(TaskRun.id.in_(ids)))).all()
    return {row.id: row for row in rows}  # type: ignore[misc]


async def users_without_email(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(User).where(User.welcome_email_sent_at.is_(None))
        )
    return int(count or 0)


def emails_per_address(messages: list[Message]) -> Counter[str]:
    return Counter(str(m["To"]) for m in messages)
