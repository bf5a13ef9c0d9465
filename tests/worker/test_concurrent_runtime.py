"""The concurrent runtime (`-P threads`: many runs in flight per process, on one event loop) in
a real worker process, against real PostgreSQL, Redis and a slow SMTP server."""

import asyncio
import contextlib
import os
import signal
import time
import uuid

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import TaskState
from tests.faults.stack import emails_per_address, own_redis, users_without_email
from tests.fixtures.postgres import connections_of
from tests.fixtures.processes import Processes
from tests.fixtures.runs import (
    publish,
    queue_welcome_runs,
    runs_by_id,
    unfinished_runs,
    wait_for_state,
)
from tests.fixtures.smtp import Mailbox, SlowMailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually, wait_until
from tests.worker.probe_tasks import PROBE_APP, SLEEP, SLEEP_RETRIED

# A lost message comes back within seconds; a dead run's claim expires 3 + 5 s after it began.
SHORT_LIMITS = {
    "TASK_SOFT_TIME_LIMIT": "3",
    "TASK_TIME_LIMIT": "4",
    "BROKER_VISIBILITY_TIMEOUT": "6",
    "SMTP_TIMEOUT": "3",
}


async def all_succeeded(engine: AsyncEngine, run_ids: list[uuid.UUID]) -> bool:
    runs = await runs_by_id(engine, run_ids)
    return len(runs) == len(run_ids) and all(r.state == TaskState.SUCCEEDED for r in runs.values())


async def test_200_runs_in_flight_hold_no_more_database_connections_than_the_pool(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine, slow_smtp_server: SlowMailbox
) -> None:
    users, pool_size = 200, 3
    user_ids = await insert_users(e2e_engine, *numbered_emails("many", users))
    run_ids = await queue_welcome_runs(e2e_engine, e2e_redis, user_ids)
    processes.worker(
        pool="threads",
        concurrency=users,
        WORKER_DB_POOL_SIZE=str(pool_size),
        SMTP_POOL_SIZE=str(users),
        **smtp_env(slow_smtp_server),
    )
    peak_connections = 0

    async def sample() -> None:
        nonlocal peak_connections
        while True:
            peak_connections = max(
                peak_connections, await connections_of(e2e_engine, "backend.worker")
            )
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        await eventually(lambda: all_succeeded(e2e_engine, run_ids), 120, "every run to succeed")
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    print(
        f"\n{slow_smtp_server.peak_in_flight} messages in flight at the peak, "
        f"{peak_connections} worker connections at the peak, "
        f"{slow_smtp_server.sessions} SMTP sessions for {users} messages"
    )
    # Ten times more runs waited on the mail server at once than there are connections (how
    # many more depends on how busy the machine is), and they used at most 3.
    assert slow_smtp_server.peak_in_flight >= 10 * pool_size
    assert 0 < peak_connections <= pool_size
    assert set(emails_per_address(slow_smtp_server.messages).values()) == {1}
    assert await users_without_email(e2e_engine) == 0


async def test_smtp_sessions_are_reused_across_messages_and_bounded_by_the_pool(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine, slow_smtp_server: SlowMailbox
) -> None:
    slow_smtp_server.delay = 0.05
    user_ids = await insert_users(e2e_engine, *numbered_emails("reuse", 60))
    run_ids = await queue_welcome_runs(e2e_engine, e2e_redis, user_ids)
    processes.worker(
        pool="threads", concurrency=20, SMTP_POOL_SIZE="4", **smtp_env(slow_smtp_server)
    )
    await eventually(lambda: all_succeeded(e2e_engine, run_ids), 60, "every run to succeed")
    assert len(slow_smtp_server.messages) == 60
    # A new connection per message would make 60 sessions; 20 runs in flight share 4.
    assert slow_smtp_server.sessions <= 4
    assert slow_smtp_server.peak_in_flight == 4


async def test_a_run_past_its_soft_limit_is_cut_off_without_holding_up_the_others(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine, smtp_server: Mailbox
) -> None:
    [failing] = await publish(e2e_redis, SLEEP.name, seconds=60)
    [retried] = await publish(e2e_redis, SLEEP_RETRIED.name, seconds=60)
    user_ids = await insert_users(e2e_engine, *numbered_emails("beside", 30))
    run_ids = await queue_welcome_runs(e2e_engine, e2e_redis, user_ids)
    processes.worker(app=PROBE_APP, pool="threads", concurrency=10, **smtp_env(smtp_server))
    started = time.monotonic()

    await eventually(lambda: all_succeeded(e2e_engine, run_ids), 30, "the emails beside them")
    emails_done_in = time.monotonic() - started
    sleepers = await runs_by_id(e2e_engine, [failing, retried])
    assert sleepers[failing].state == TaskState.STARTED, "the emails waited for a sleeper"

    async def finished() -> bool:
        runs = await runs_by_id(e2e_engine, [failing, retried])
        return all(r.state == TaskState.FAILED for r in runs.values())

    await eventually(finished, 30, "both sleepers to be cut off")
    sleepers = await runs_by_id(e2e_engine, [failing, retried])
    print(f"\n30 emails done in {emails_done_in:.1f}s beside two runs that sleep for 60 s")
    for run in sleepers.values():
        assert run.error is not None
        assert run.error.startswith("SoftTimeLimitExceeded")
        assert run.started_at is not None
        assert run.finished_at is not None
        assert (run.finished_at - run.started_at).total_seconds() < 10
    # Its contract says FAILED at once; the other's, RETRYING (then FAILED, retries used up).
    assert sleepers[failing].attempts == 1
    assert sleepers[retried].attempts == 2


async def test_a_core_that_blocks_the_loop_past_the_hard_limit_ends_the_process(
    processes: Processes, e2e_redis: Redis
) -> None:
    redis, _ = own_redis(processes)
    worker = processes.worker(app=PROBE_APP, pool="threads", concurrency=4, **SHORT_LIMITS)
    await publish(redis, "tests.block_the_loop", seconds=30)
    started = time.monotonic()
    wait_until(lambda: worker.popen.poll() is not None, 20, "the watchdog to end the worker")
    print(f"\nworker exited {worker.popen.returncode}, {time.monotonic() - started:.1f}s in")
    assert worker.popen.returncode == 70
    assert "past the hard time limit" in worker.output()
    await redis.aclose()


async def test_sigkill_with_runs_in_flight_loses_none_and_sends_each_email_once(
    processes: Processes, e2e_engine: AsyncEngine, slow_smtp_server: SlowMailbox
) -> None:
    users = 120
    redis, _ = own_redis(processes)
    processes.env.update(**SHORT_LIMITS, **smtp_env(slow_smtp_server))
    user_ids = await insert_users(e2e_engine, *numbered_emails("kill", users))
    run_ids = await queue_welcome_runs(e2e_engine, redis, user_ids)
    worker = processes.worker(pool="threads", concurrency=40)

    wait_until(lambda: slow_smtp_server.in_flight >= 20, 30, "runs in flight")
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()
    in_flight = int(await redis.hlen("unacked"))
    processes.worker(pool="threads", concurrency=40)

    async def all_done() -> bool:
        return await unfinished_runs(e2e_engine) == 0

    await eventually(all_done, 120, "every run to succeed after the restart")
    runs = await runs_by_id(e2e_engine, run_ids)
    assert all(r.state == TaskState.SUCCEEDED for r in runs.values())
    assert await users_without_email(e2e_engine) == 0
    per_address = emails_per_address(slow_smtp_server.messages)
    assert set(per_address) == {f"kill{i}@example.com" for i in range(users)}
    # A message handed to the server while the worker died may be sent again; nothing else.
    duplicates = sum(n - 1 for n in per_address.values())
    print(f"\n{in_flight} messages unacked at the kill; {duplicates} duplicate emails")
    assert in_flight >= 20
    assert duplicates <= in_flight
    await redis.aclose()


async def test_sigterm_finishes_the_runs_in_flight_and_gives_back_the_rest(
    processes: Processes, e2e_engine: AsyncEngine, slow_smtp_server: SlowMailbox
) -> None:
    users = 100
    redis, _ = own_redis(processes)
    processes.env.update(**smtp_env(slow_smtp_server))
    user_ids = await insert_users(e2e_engine, *numbered_emails("term", users))
    run_ids = await queue_welcome_runs(e2e_engine, redis, user_ids)
    worker = processes.worker(pool="threads", concurrency=20)

    wait_until(lambda: slow_smtp_server.in_flight >= 10, 30, "runs in flight")
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0, worker.output()[-3000:]
    # Every run that started finished; nothing is held unacked; the rest wait in the queue.
    runs = await runs_by_id(e2e_engine, run_ids)
    started = [r for r in runs.values() if r.attempts > 0]
    assert started
    assert all(r.state == TaskState.SUCCEEDED for r in started)
    assert await redis.hlen("unacked") == 0
    assert await redis.llen("default") == users - len(started)

    processes.worker(pool="threads", concurrency=20)
    await eventually(lambda: all_succeeded(e2e_engine, run_ids), 60, "the rest to succeed")
    assert set(emails_per_address(slow_smtp_server.messages).values()) == {1}
    assert all(r.attempts == 1 for r in (await runs_by_id(e2e_engine, run_ids)).values())
    await redis.aclose()


async def test_a_hung_smtp_exchange_is_bounded_by_smtp_timeout(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine, slow_smtp_server: SlowMailbox
) -> None:
    slow_smtp_server.delay = 60  # the server takes the message and never answers
    [user_id] = await insert_users(e2e_engine, "hung@example.com")
    [run_id] = await queue_welcome_runs(e2e_engine, e2e_redis, [user_id])
    processes.worker(
        pool="threads",
        concurrency=4,
        SMTP_TIMEOUT="2",
        TASK_MAX_RETRIES="0",
        **smtp_env(slow_smtp_server),
    )
    run = await wait_for_state(e2e_engine, run_id, TaskState.FAILED, timeout=90)
    assert run.started_at is not None
    assert run.finished_at is not None
    assert (run.finished_at - run.started_at).total_seconds() < 6
    assert run.error is not None
    assert "Timeout" in run.error.split(":")[0]
    async with e2e_engine.connect() as conn:
        claim = await conn.scalar(
            text("SELECT welcome_email_claim FROM users WHERE id = :id"), {"id": user_id}
        )
    assert claim is None  # released, so a retry could claim it at once
