"""A worker killed outright, and a worker asked to stop: what happens to the messages it held."""

import os
import signal
import time

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import TaskState, User
from tests.faults.stack import emails_per_address, own_redis, users_without_email
from tests.fixtures.processes import Processes
from tests.fixtures.runs import (
    publish,
    queue_welcome_runs,
    runs_by_id,
    unfinished_runs,
    wait_for_state,
)
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually
from tests.worker.probe_tasks import PROBE_APP, REPORTS_KEY, SLOW_UPDATE

CONCURRENCY = 2
# Celery reserves prefetch_multiplier x concurrency messages (worker_prefetch_multiplier=1) and
# each child runs one: at most this many messages are delivered but unacked at any moment.
IN_FLIGHT_BOUND = 1 * CONCURRENCY + CONCURRENCY
# Short limits so a lost message comes back in seconds (the shortest visibility timeout the
# settings accept; tests/faults/test_worker_recovery.py kills workers at the defaults).
SHORT_LIMITS = {
    "TASK_SOFT_TIME_LIMIT": "3",
    "TASK_TIME_LIMIT": "4",
    "BROKER_VISIBILITY_TIMEOUT": "6",
}
USERS = 500


async def test_sigkill_with_500_in_flight_loses_nothing_and_applies_each_once(
    processes: Processes, e2e_engine: AsyncEngine, smtp_server: Mailbox
) -> None:
    redis, _ = own_redis(processes)
    processes.env.update(**SHORT_LIMITS, **smtp_env(smtp_server))
    user_ids = await insert_users(e2e_engine, *numbered_emails("kill", USERS))
    run_ids = await queue_welcome_runs(e2e_engine, redis, user_ids)
    worker = processes.worker(concurrency=CONCURRENCY)

    smtp_server.wait_for(USERS // 3, timeout=60)
    os.killpg(worker.popen.pid, signal.SIGKILL)  # the main process and every child, at once
    worker.popen.wait()
    killed_at = time.monotonic()
    sent_before_kill = len(smtp_server.messages)
    in_flight = int(await redis.hlen("unacked"))  # delivered, never acked: to be redelivered

    processes.worker(concurrency=CONCURRENCY)

    async def all_done() -> bool:
        return await unfinished_runs(e2e_engine) == 0

    await eventually(all_done, 90, "every run to succeed after the restart")
    recovered_in = time.monotonic() - killed_at
    smtp_server.wait_for(USERS, timeout=10)

    runs = await runs_by_id(e2e_engine, run_ids)
    assert len(runs) == USERS
    assert all(r.state == TaskState.SUCCEEDED for r in runs.values())
    # The effect committed once per run: each run's own outcome is True (it sent), never a
    # second "already sent" outcome overwriting it.
    assert sorted(str(r.result) for r in runs.values()) == ["True"] * USERS
    assert await users_without_email(e2e_engine) == 0
    redelivered = sum(1 for r in runs.values() if r.attempts > 1)

    per_address = emails_per_address(smtp_server.messages)
    assert set(per_address) == {f"kill{i}@example.com" for i in range(USERS)}
    duplicates = sum(n - 1 for n in per_address.values())
    print(
        f"\nkilled after {sent_before_kill} emails; {in_flight} messages unacked at the kill; "
        f"{redelivered} runs started twice; {duplicates} duplicate emails; "
        f"all {USERS} done {recovered_in:.1f}s after the kill"
    )
    assert 0 < in_flight <= IN_FLIGHT_BOUND
    assert redelivered <= in_flight
    assert duplicates <= in_flight


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_message_fetched_by_a_worker_killed_before_reading_it_runs_elsewhere(
    processes: Processes, e2e_engine: AsyncEngine, pool: str
) -> None:
    """The narrowest window: Redis has answered the worker's fetch, the worker never read the
    answer. With kombu's BRPOP the message would be in Redis nowhere (tests/worker/
    test_transport.py shows it); the landing list keeps it."""
    redis, _ = own_redis(processes)
    processes.env.update(**SHORT_LIMITS)
    [user_id] = await insert_users(e2e_engine, *numbered_emails("fetched", 1))
    # One queue, and a fetch that waits two minutes on it: stopped while Redis holds the fetch,
    # the worker cannot read the answer Redis then sends.
    worker = processes.worker(app=PROBE_APP, pool=pool, queues="default", PROBE_FETCH_WAIT="120")

    async def waiting_on_its_queue() -> bool:
        return any(client["cmd"] == "blmove" for client in await redis.client_list())

    await eventually(waiting_on_its_queue, 30, "the worker to wait on its queue")
    worker.signal(signal.SIGSTOP)  # the main process, which fetches
    [run_id] = await publish(redis, SLOW_UPDATE.name, user_id=user_id, seconds=0)

    async def served_to_the_stopped_worker() -> bool:
        return int(await redis.llen("default")) == 0

    await eventually(served_to_the_stopped_worker, 10, "Redis to answer the stopped worker")
    assert await redis.hlen("unacked") == 0  # never recorded: the worker did not read it
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()
    killed_at = time.monotonic()

    processes.worker(app=PROBE_APP, pool=pool, queues="default")
    run = await wait_for_state(e2e_engine, run_id, TaskState.SUCCEEDED, timeout=30)
    recovered_in = time.monotonic() - killed_at
    print(f"\n{pool}: the fetched message ran elsewhere {recovered_in:.1f}s after the kill")
    assert run.attempts == 1  # it never ran before: nothing of TASK_MAX_ATTEMPTS is used up
    # Within the visibility timeout plus a renewal interval of the survivor, and its start-up.
    assert recovered_in < int(SHORT_LIMITS["BROKER_VISIBILITY_TIMEOUT"]) + 10


async def test_sigterm_lets_the_running_task_finish_and_nothing_comes_back(
    processes: Processes, e2e_engine: AsyncEngine
) -> None:
    redis, _ = own_redis(processes)
    [user_id] = await insert_users(e2e_engine, *numbered_emails("term", 1))
    worker = processes.worker(app=PROBE_APP, concurrency=1, **SHORT_LIMITS)
    [run_id] = await publish(redis, SLOW_UPDATE.name, user_id=user_id, seconds=2)

    async def started() -> bool:
        return int(await redis.llen(REPORTS_KEY)) >= 1

    await eventually(started, 30, "the slow task to start")
    worker.signal(signal.SIGTERM)  # what Kubernetes sends: the main process only
    termed_at = time.monotonic()
    # The task (2 s) is far shorter than the pod's grace period (400 s): a warm shutdown waits
    # for it; the bound here only keeps a hung worker from hanging the test.
    assert worker.popen.wait(timeout=30) == 0, worker.output()[-3000:]
    print(f"\nworker exited 0, {time.monotonic() - termed_at:.1f}s after SIGTERM")

    run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
    assert run.state == TaskState.SUCCEEDED
    assert run.attempts == 1
    # Acked before the exit: nothing left to redeliver, now or after the visibility timeout.
    assert await redis.hlen("unacked") == 0
    assert await redis.llen("default") == 0

    # A second worker gets only what is published afterwards: the marker comes back, the slow
    # run does not (the queue is FIFO, so it would have come first).
    processes.worker(app=PROBE_APP, concurrency=1, **SHORT_LIMITS)
    await publish(redis, "tests.backend_pid")

    async def marker_done() -> bool:
        return int(await redis.llen(REPORTS_KEY)) >= 2

    await eventually(marker_done, 30, "the marker task")
    assert (await runs_by_id(e2e_engine, [run_id]))[run_id].attempts == 1
    async with e2e_engine.connect() as conn:
        name = await conn.scalar(select(User.full_name).where(User.id == user_id))
    assert name == "term0+"
    await close(redis)


async def close(redis: Redis) -> None:
    await redis.aclose()
