"""The scheduler in-process, against this worker's in-process Redis index (no beat runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from shared.beat import REDBEAT_KEY_PREFIX
from shared.contracts import CONTRACTS
from shared.settings import settings
from tests.environment import TEST_REDIS_URL
from worker.beat import HeartbeatScheduler
from worker.celery_app import app


@pytest.fixture(autouse=True)
def heartbeats_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler writes its heartbeat file: in the test's folder, not the machine's /tmp."""
    monkeypatch.setattr(settings, "heartbeat_dir", str(tmp_path))


@pytest.fixture
def client(redis: object) -> Iterator[Redis]:
    """Depends on `redis`, which flushed the index."""
    with Redis.from_url(TEST_REDIS_URL, decode_responses=True) as sync_client:
        yield sync_client


def schedule_keys(client: Redis) -> set[str]:
    key = app.redbeat_conf.schedule_key  # type: ignore[attr-defined]
    return {str(member) for member in client.zrange(key, 0, -1)}


# From the code, as beat writes them: one per contract with a `periodic`.
CODE_KEYS = {REDBEAT_KEY_PREFIX + name for name in app.conf.beat_schedule}


def test_the_schedule_is_the_contracts_periodic_entries() -> None:
    declared = {c.periodic.entry: c.name for c in CONTRACTS.values() if c.periodic is not None}
    built = {name: entry["task"] for name, entry in app.conf.beat_schedule.items()}
    assert built == declared, (
        "app.conf.beat_schedule is built from the contracts' `periodic` (worker/schedule.py); "
        "declare a periodic task with `periodic=Periodic(...)` on its contract, not in the app"
    )


def test_entries_not_in_the_code_are_removed_from_redis(client: Redis) -> None:
    HeartbeatScheduler(app=app)
    assert schedule_keys(client) == CODE_KEYS
    conf = app.redbeat_conf  # type: ignore[attr-defined]
    # Left behind by an older release: one it knew as static, one it did not.
    client.zadd(conf.schedule_key, {"redbeat:removed-entry": 0, "redbeat:stray-entry": 0})
    client.hset("redbeat:removed-entry", "definition", "{}")
    client.hset("redbeat:stray-entry", "definition", "{}")
    client.sadd(conf.statics_key, "removed-entry")

    HeartbeatScheduler(app=app)
    assert schedule_keys(client) == CODE_KEYS
    assert not client.exists("redbeat:removed-entry", "redbeat:stray-entry")


def test_last_run_survives_a_restart(client: Redis) -> None:
    HeartbeatScheduler(app=app)
    meta = client.hget("redbeat:prune-logs", "meta")
    HeartbeatScheduler(app=app)
    assert client.hget("redbeat:prune-logs", "meta") == meta


def test_one_holder_and_a_standby_that_sends_nothing(client: Redis) -> None:
    holder, standby = HeartbeatScheduler(app=app), HeartbeatScheduler(app=app)
    holder.tick()
    standby.tick()
    assert holder.lock is not None
    assert standby.lock is None
    # The holder's lock expired (it was paused too long) and the standby took it.
    client.delete(app.redbeat_conf.lock_key)  # type: ignore[attr-defined]
    standby.tick()
    assert standby.lock is not None
    holder.tick()
    assert holder.lock is None, "a holder that lost the lock must stand by"
    standby.close()
