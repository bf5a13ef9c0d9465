"""What only the fault tests share: a Redis of the test's own (one it may stop), and the
questions they ask afterwards. Users and runs come from tests/fixtures."""

from __future__ import annotations

from collections import Counter
from email.message import Message

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import User
from tests.fixtures.processes import Processes


def own_redis(processes: Processes) -> tuple[Redis, int]:
    """Processes.own_redis, with a client of that server."""
    port = processes.own_redis()
    return Redis.from_url(processes.env["REDIS_URL"]), port


async def users_without_email(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(User).where(User.welcome_email_sent_at.is_(None))
        )
    return int(count or 0)


def emails_per_address(messages: list[Message]) -> Counter[str]:
    return Counter(str(m["To"]) for m in messages)
