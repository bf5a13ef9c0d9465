"""A worker that dies or freezes gives its runs back within seconds, whatever the task time
limit; a live worker never loses one (worker.visibility renews what it holds; worker.recording
fences a superseded attempt). Real worker processes, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Mapping

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contracts import SEND_WELCOME_EMAIL
from shared.models import TaskState
from tests.faults.stack import emails_per_address, users_without_email
from tests.fixtures.processes import Proc, Processes
from tests.fixtures.runs import publish, queue_welcome_runs, runs_by_id
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually
from tests.worker.probe_tasks import REPORTS_KEY

# At the defaults (BROKER_VISIBILITY_TIMEOUT 30 s, renewed every 5 s, swept every 5 s), a dead
# worker's last renewal is at most 5 s old when it dies, its messages become visible 30 s after
# that renewal, and the next sweep (at most 5 s later) gives them back: 35 s, plus the run.
DEFAULT_TIMEOUT = 30
RECOVERY_PROMISE = 60  # the bound, seconds from the kill to the last held run done
ONE_HOUR_LIMITS = {"TASK_SOFT_TIME_LIMIT": "3500", "TASK_TIME_LIMIT": "3600"}
# The shortest timeout the settings accept, for the tests about live workers: renewed every
# second, so a run of a few seconds already lasts several visibility periods.
SHORT_TIMEOUT = 6
SHORT = {"BROKER_VISIBILITY_TIMEOUT": str(SHORT_TIMEOUT)}
USERS = 200
KILL_BEFORE_THE_END = 30


def held_run_ids(unacked: Mapping[bytes | str, bytes | str]) -> set[uuid.UUID]:
    """The task ids of the messages in kombu's unacked hash (delivered, not yet acked)."""
    return {uuid.UUID(json.loads(raw)[0]["headers"]["id"]) for raw in unacked.values()}


async def reports(redis: Redis) -> list[dict[str, object]]:
    return [json.loads(item) for item in await redis.lrange(REPORTS_KEY, 0, -1)]


def kill_whole_worker(worker: Proc) -> float:
    """SIGKILL of the main process and every child at once (a node loss, an OOM-killed pod)."""
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()
    return time.monotonic()


def log_outcomes(worker: Proc, run_id: uuid.UUID) -> list[object]:
    return [
        line.get("outcome")
        for line in worker.log_lines()
        if line.get("task_id") == str(run_id) and line.get("message") == "task finished"
    ]


@pytest.mark.parametrize("limits", [{}, ONE_HOUR_LIMITS], ids=["default-limits", "one-hour-limit"])
async def test_a_killed_workers_runs_finish_on_another_worker_within_60_seconds(
    processes: Processes,
    e2e_engine: AsyncEngine,
    e2e_redis: Redis,
    smtp_server: Mailbox,
    limits: dict[str, str],
) -> None:
    processes.env.update(**limits, **smtp_env(smtp_server))
    processes.worker(concurrency=2)  # the survivor
    victim = processes.worker(concurrency=2)
    half = USERS // 2
    user_ids = await insert_users(e2e_engine, *numbered_emails("crash", USERS))
    # Runs the API wrote (outbox rows), and messages from a producer that wrote no row.
    run_ids = await queue_welcome_runs(e2e_engine, e2e_redis, user_ids[:half])
    for user_id in user_ids[half:]:
        run_ids += await publish(e2e_redis, SEND_WELCOME_EMAIL.name, user_id=user_id)

    # Late in the batch, so that the survivor's share of the rest takes seconds, not the
    # visibility timeout: then what stays unacked is plainly the dead worker's.
    smtp_server.wait_for(USERS - KILL_BEFORE_THE_END, timeout=60)
    killed_at = kill_whole_worker(victim)
    held_at_kill = held_run_ids(await e2e_redis.hgetall("unacked"))

    # The survivor finishes the queue and what it held; what stays unacked then is what the
    # dead worker held (running, reserved, or done but not acked), which no one renews now.
    async def only_the_dead_workers_messages_left() -> bool:
        unacked = held_run_ids(await e2e_redis.hgetall("unacked"))
        others = [run_id for run_id in run_ids if run_id not in unacked]
        return (
            await e2e_redis.llen("default") == 0
            and unacked <= held_at_kill
            and await succeeded(e2e_engine, others) == len(others)
        )

    await eventually(only_the_dead_workers_messages_left, 30, "the survivor to finish the rest")
    victims = held_run_ids(await e2e_redis.hgetall("unacked"))
    assert victims, "the killed worker held no message at the kill: nothing was tested"

    # Recovered: every message it held was delivered again, ran (or found its run finished)
    # and was acked by the survivor.
    async def victims_done() -> bool:
        unacked = held_run_ids(await e2e_redis.hgetall("unacked"))
        return not unacked & victims and await succeeded(e2e_engine, list(victims)) == len(victims)

    await eventually(victims_done, RECOVERY_PROMISE + 30, "the killed worker's runs")
    recovered_in = time.monotonic() - killed_at

    runs = await runs_by_id(e2e_engine, run_ids)
    assert len(runs) == USERS
    assert all(run.state == TaskState.SUCCEEDED for run in runs.values())
    assert sorted(str(run.result) for run in runs.values()) == ["True"] * USERS
    assert await users_without_email(e2e_engine) == 0
    per_address = emails_per_address(smtp_server.wait_for(USERS, timeout=10))
    assert set(per_address) == {f"crash{i}@example.com" for i in range(USERS)}
    # A second email only where the dead worker's SMTP exchange had been accepted but its
    # commit not made: at most one per run it was running.
    duplicates = {address: n for address, n in per_address.items() if n > 1}
    assert all(n == 2 for n in duplicates.values())
    assert len(duplicates) <= len(victims)
    print(
        f"\n{limits or 'defaults'}: the killed worker held {len(victims)} runs; all finished "
        f"{recovered_in:.1f}s after the kill (promise {RECOVERY_PROMISE}s); "
        f"{len(duplicates)} duplicate emails"
    )
    assert recovered_in < RECOVERY_PROMISE


async def succeeded(engine: AsyncEngine, run_ids: list[uuid.UUID]) -> int:
    runs = await runs_by_id(engine, run_ids)
    return sum(run.state == TaskState.SUCCEEDED for run in runs.values())
