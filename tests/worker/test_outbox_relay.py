"""The relay's core: publish what the API could not, repair what the broker lost."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.broker import Broker, PublishError
from shared.contracts import PRUNE_LOGS, RELAY_OUTBOX
from shared.models import TaskRun, TaskState
from shared.settings import settings
from tests.fixtures.processes import FAST_RELAY, Processes
from tests.fixtures.waiting import wait_until
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


async def test_relay_ticks_keep_no_rows_and_log_only_what_they_did(
    processes: Processes, e2e_engine: AsyncEngine
) -> None:
    """A quiet task (RELAY_OUTBOX.quiet): on a real worker and beat, ticks that find nothing
    leave no task-run row (so none fill GET /tasks) and no log line; a tick that publishes a
    run says so once."""
    processes.env.update(**FAST_RELAY)
    worker = processes.worker(concurrency=1)
    beat = processes.beat()

    def ticks() -> int:
        return beat.output().count(f"Sending due task outbox-relay ({RELAY_OUTBOX.name})")

    def relay_lines() -> list[dict[str, object]]:
        return [line for line in worker.log_lines() if line.get("task_name") == RELAY_OUTBOX.name]

    worker.wait_for_output("ready")
    first = ticks()
    wait_until(lambda: ticks() >= first + 3, 30, "three relay ticks after the worker is ready")
    assert relay_lines() == []

    # A run the API committed but never published (it died): the relay's next ticks send it.
    orphan = make_run(
        name=PRUNE_LOGS.name,
        kwargs={"days": 30},
        created_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    async with AsyncSession(e2e_engine) as db:
        db.add(orphan)
        await db.commit()
    wait_until(lambda: relay_lines() != [], 20, "the relay's line about the run it published")
    [line] = relay_lines()
    assert line["message"] == "task finished"
    assert line["result"] == 1
    async with e2e_engine.connect() as connection:
        names = set((await connection.scalars(select(TaskRun.name))).all())
    assert names == {PRUNE_LOGS.name}, "relay ticks must keep no task-run row"
