"""The relay's core: publish what the API could not, repair what the broker lost."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from shared.broker import Broker, PublishError
from shared.models import TaskRun, TaskState
from shared.settings import settings
from worker.outbox.tasks import relay


def make_run(**values: object) -> TaskRun:
    defaults: dict[str, object] = {
        "id": uuid.uuid4(),
        "name": "users.send_welcome_email",
        "kwargs": {"user_id": 1},
        "state": TaskState.QUEUED,
        "attempts": 0,
    }
    return TaskRun(**{**defaults, **values})


async def queued_ids(redis: Redis, queue: str = "default") -> list[str]:
    return [json.loads(m)["headers"]["id"] for m in await redis.lrange(queue, 0, -1)]


@pytest.fixture
def broker(redis: Redis) -> Broker:
    return Broker(redis, timeout=1)


async def test_publishes_unpublished_runs_after_the_grace_period(
    db: AsyncSession, redis: Redis, broker: Broker
) -> None:
    now = datetime.now(UTC)
    late = make_run(created_at=now - timedelta(minutes=1), request_id="req-1")
    fresh = make_run(created_at=now + timedelta(seconds=5))  # the API may still publish it
    prune = make_run(
        name="maintenance.prune_logs", kwargs={"days": 3}, created_at=now - timedelta(minutes=2)
    )
    db.add_all([late, fresh, prune])
    await db.flush()

    assert await relay(db, broker) == 2
    assert await queued_ids(redis) == [str(late.id)]
    assert await queued_ids(redis, "maintenance") == [str(prune.id)]
    [message] = await redis.lrange("default", 0, -1)
    assert json.loads(message)["headers"]["request_id"] == "req-1"
    await db.refresh(late)
    await db.refresh(fresh)
    assert late.published_at is not None
    assert fresh.published_at is None
    assert await relay(db, broker) == 0  # nothing published twice


async def test_republishes_runs_the_broker_lost_and_fails_exhausted_ones(
    db: AsyncSession, redis: Redis, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "outbox_repair_after", 60)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    lost = make_run(published_at=long_ago, created_at=long_ago)
    waiting = make_run(published_at=datetime.now(UTC), created_at=long_ago)
    dead = make_run(
        state=TaskState.STARTED, attempts=1, published_at=long_ago, started_at=long_ago,
        created_at=long_ago,
    )  # fmt: skip
    exhausted = make_run(
        state=TaskState.STARTED, attempts=settings.task_max_attempts, published_at=long_ago,
        started_at=long_ago, created_at=long_ago,
    )  # fmt: skip
    db.add_all([lost, waiting, dead, exhausted])
    await db.flush()

    assert await relay(db, broker) == 3
    assert sorted(await queued_ids(redis)) == sorted([str(lost.id), str(dead.id)])
    for run in (lost, dead, exhausted, waiting):
        await db.refresh(run)
    assert dead.state == TaskState.QUEUED
    assert exhausted.state == TaskState.FAILED
    assert exhausted.error is not None
    assert "gave up" in exhausted.error
    assert waiting.published_at is not None
    assert await relay(db, broker) == 0


async def test_a_broker_outage_leaves_the_rows_unpublished(db: AsyncSession) -> None:
    down = Broker(Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.5), timeout=0.5)
    run = make_run(created_at=datetime.now(UTC) - timedelta(minutes=1))
    db.add(run)
    await db.flush()
    with pytest.raises(PublishError, match="broker did not take"):
        await relay(db, down)
    await db.refresh(run)
    assert run.published_at is None
