"""A worker that dies or freezes gives its runs back within seconds, whatever the task time
limit; a live worker never loses one (worker.visibility renews what it holds; worker.recording
fences a superseded attempt). Real worker processes, real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contracts import SEND_WELCOME_EMAIL
from shared.models import TaskRun, TaskState, User
from tests.faults.stack import emails_per_address, users_without_email
from tests.fixtures.ports import free_port
from tests.fixtures.processes import Proc, Processes
from tests.fixtures.redis_server import redis_server_argv
from tests.fixtures.runs import publish, queue_welcome_runs, runs_by_id
from tests.fixtures.smtp import Mailbox, SlowMailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually, wait_until
from tests.worker.probe_tasks import PROBE_APP, REPORTS_KEY, RETRY_ONCE, SLOW_UPDATE
from worker.transport import LANDING_MARK
from worker.visibility import blocked_main_process_bound, renew_interval

# At the defaults (BROKER_VISIBILITY_TIMEOUT 30 s, renewed every 5 s, swept every 5 s), a dead
# worker's last renewal is at most 5 s old when it dies, its messages become visible 30 s after
# that renewal, and the next sweep (at most 5 s later) gives them back: 35 s, plus the run.
RECOVERY_PROMISE = 60  # the bound, seconds from the kill to the last held run done
ONE_HOUR_LIMITS = {"TASK_SOFT_TIME_LIMIT": "3500", "TASK_TIME_LIMIT": "3600"}
# The shortest timeout the settings accept, for the tests about live workers: renewed every
# second, so a run of a few seconds already lasts several visibility periods.
SHORT_TIMEOUT = 6
SHORT = {"BROKER_VISIBILITY_TIMEOUT": str(SHORT_TIMEOUT)}
USERS = 200
# Runs of 1 s each, on a survivor of one child: the queue stays long for that many seconds.
BUSY_RUNS = 30
GONE_BEFORE_THE_END = 30  # runs left when the victim is killed or frozen
SEND_DELAY = 0.2  # seconds the mail server takes to accept each message


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


@dataclass
class Batch:
    """Welcome runs for USERS users, being sent by two workers when one of them goes."""

    victim: Proc
    run_ids: list[uuid.UUID]


async def send_welcome_batch(
    processes: Processes, engine: AsyncEngine, redis: Redis, smtp: SlowMailbox, pool: str
) -> Batch:
    """Two workers of one kind, then the batch; returns once most of it went out, so that the
    survivor's share of the rest takes seconds, not the visibility timeout (what stays unacked
    afterwards is plainly the victim's)."""
    # Each message takes a while to be accepted, so that when the victim goes the runs left
    # are in flight on both workers (with an instant server they end within milliseconds of
    # the count, and the victim may hold nothing).
    smtp.delay = SEND_DELAY
    processes.env.update(**smtp_env(smtp))
    concurrency = 2 if pool == "prefork" else 20
    processes.worker(concurrency=concurrency, pool=pool)  # the survivor
    victim = processes.worker(concurrency=concurrency, pool=pool)
    half = USERS // 2
    user_ids = await insert_users(engine, *numbered_emails("crash", USERS))
    # Runs the API wrote (outbox rows), and messages from a producer that wrote no row.
    run_ids = await queue_welcome_runs(engine, redis, user_ids[:half])
    for user_id in user_ids[half:]:
        run_ids += await publish(redis, SEND_WELCOME_EMAIL.name, user_id=user_id)
    smtp.wait_for(USERS - GONE_BEFORE_THE_END, timeout=60)
    return Batch(victim, run_ids)


@dataclass
class Held:
    """The runs whose messages workers hold."""

    unacked: set[uuid.UUID]  # delivered: running, reserved, or done and not yet acked
    # Fetched and not yet recorded as unacked: on a worker's landing list (worker.transport).
    landing: set[uuid.UUID]

    @property
    def runs(self) -> set[uuid.UUID]:
        return self.unacked | self.landing


async def held_now(redis: Redis) -> Held:
    landing: set[uuid.UUID] = set()
    for key in await redis.keys(f"*{LANDING_MARK}*"):
        for raw in await redis.lrange(key, 0, -1):
            landing.add(uuid.UUID(json.loads(raw)["headers"]["id"]))
    return Held(held_run_ids(await redis.hgetall("unacked")), landing)


async def victims_of(batch: Batch, engine: AsyncEngine, redis: Redis) -> Held:
    """Right after the victim went: the runs whose messages it held, which no one renews now.
    Waits until the survivor finished the rest."""
    held_when_it_went = (await held_now(redis)).runs

    async def unfinished_elsewhere(held: set[uuid.UUID]) -> set[uuid.UUID]:
        runs = await runs_by_id(engine, batch.run_ids)
        return {
            run_id
            for run_id in batch.run_ids
            if run_id not in held
            and (run_id not in runs or runs[run_id].state != TaskState.SUCCEEDED)
        }

    async def only_the_victims_messages_left() -> bool:
        held = (await held_now(redis)).runs
        return (
            await redis.llen("default") == 0
            and held <= held_when_it_went
            and not await unfinished_elsewhere(held)
        )

    try:
        await eventually(only_the_victims_messages_left, 30, "the survivor to finish the rest")
    except AssertionError as exc:
        held = (await held_now(redis)).runs
        runs = await runs_by_id(engine, batch.run_ids)
        unfinished = {
            str(run_id): runs[run_id].state if run_id in runs else "no row"
            for run_id in await unfinished_elsewhere(held)
        }
        exc.add_note(
            f"queued {await redis.llen('default')}; held {len(held)}, of which "
            f"{len(held - held_when_it_went)} taken after; unfinished elsewhere {unfinished}"
        )
        raise
    victims = await held_now(redis)
    assert victims.runs, "the victim held no message when it went: nothing was tested"
    return victims


async def wait_for_recovery(
    victims: set[uuid.UUID], engine: AsyncEngine, redis: Redis, since: float
) -> float:
    """Until every message the victim held was delivered again, ran (or found its run
    finished) and was acked; returns the seconds since `since`."""

    async def recovered() -> bool:
        unacked = held_run_ids(await redis.hgetall("unacked"))
        return not unacked & victims and await succeeded(engine, list(victims)) == len(victims)

    await eventually(recovered, RECOVERY_PROMISE + 30, "the victim's runs to finish elsewhere")
    return time.monotonic() - since


async def assert_each_effect_once(
    batch: Batch,
    engine: AsyncEngine,
    smtp: Mailbox,
    victims: set[uuid.UUID],
) -> int:
    """Every run SUCCEEDED with its own first outcome; one email per user, except a second one
    where the victim's SMTP exchange had been accepted but its commit not made (at most one per
    run it held). Returns the number of duplicate emails."""
    runs = await runs_by_id(engine, batch.run_ids)
    assert len(runs) == len(batch.run_ids)
    assert all(run.state == TaskState.SUCCEEDED for run in runs.values())
    assert sorted(str(run.result) for run in runs.values()) == ["True"] * len(batch.run_ids)
    assert await users_without_email(engine) == 0
    per_address = emails_per_address(smtp.wait_for(len(batch.run_ids), timeout=10))
    assert set(per_address) == {f"crash{i}@example.com" for i in range(len(batch.run_ids))}
    duplicates = {address: n for address, n in per_address.items() if n > 1}
    assert all(n == 2 for n in duplicates.values())
    assert len(duplicates) <= len(victims)
    return len(duplicates)


@pytest.mark.parametrize(
    ("pool", "limits"),
    [("prefork", {}), ("prefork", ONE_HOUR_LIMITS), ("threads", {})],
    ids=["prefork-default-limits", "prefork-one-hour-limit", "threads-default-limits"],
)
async def test_a_killed_workers_runs_finish_on_another_worker_within_60_seconds(
    processes: Processes,
    e2e_engine: AsyncEngine,
    e2e_redis: Redis,
    slow_smtp_server: SlowMailbox,
    limits: dict[str, str],
    pool: str,
) -> None:
    processes.env.update(**limits)
    smtp_server = slow_smtp_server
    batch = await send_welcome_batch(processes, e2e_engine, e2e_redis, smtp_server, pool)
    killed_at = kill_whole_worker(batch.victim)
    victims = (await victims_of(batch, e2e_engine, e2e_redis)).runs
    recovered_in = await wait_for_recovery(victims, e2e_engine, e2e_redis, killed_at)
    duplicates = await assert_each_effect_once(batch, e2e_engine, smtp_server, victims)
    print(
        f"\n{pool}, {limits or 'default limits'}: SIGKILL; the worker held "
        f"{len(victims)} runs; all finished {recovered_in:.1f}s after the kill (promise "
        f"{RECOVERY_PROMISE}s); {duplicates} duplicate emails"
    )
    assert recovered_in < RECOVERY_PROMISE


async def test_a_frozen_workers_runs_go_elsewhere_and_thawed_it_records_nothing_over_them(
    processes: Processes,
    e2e_engine: AsyncEngine,
    e2e_redis: Redis,
    slow_smtp_server: SlowMailbox,
) -> None:
    smtp_server = slow_smtp_server
    batch = await send_welcome_batch(processes, e2e_engine, e2e_redis, smtp_server, "prefork")
    os.killpg(batch.victim.popen.pid, signal.SIGSTOP)  # frozen, main process and children
    frozen_at = time.monotonic()
    try:
        held = await victims_of(batch, e2e_engine, e2e_redis)
        victims = held.runs
        recovered_in = await wait_for_recovery(victims, e2e_engine, e2e_redis, frozen_at)
        recorded = await outcomes(e2e_engine, victims)
    finally:
        os.killpg(batch.victim.popen.pid, signal.SIGCONT)

    # Thawed, it finishes what it was doing: each run it held it gives up (superseded), finds
    # finished (skipped), or had finished before the freeze. A message on its landing list went
    # back to the queue while it was frozen: thawed, it does not deliver it.
    def thawed_worker_done() -> bool:
        answered = {
            line.get("task_id")
            for line in batch.victim.log_lines()
            if line.get("message") == "task finished" or "skipped" in str(line.get("message"))
        }
        return {str(run_id) for run_id in held.unacked} <= answered

    await asyncio.to_thread(
        wait_until, thawed_worker_done, 60, "the thawed worker to give up what it held"
    )
    assert await outcomes(e2e_engine, victims) == recorded, "a second outcome was recorded"
    duplicates = await assert_each_effect_once(batch, e2e_engine, smtp_server, victims)
    print(
        f"\nSIGSTOP: the worker held {len(victims)} runs; all finished {recovered_in:.1f}s after "
        f"the freeze; thawed, it recorded nothing; {duplicates} duplicate emails"
    )
    assert recovered_in < RECOVERY_PROMISE


async def outcomes(
    engine: AsyncEngine, run_ids: set[uuid.UUID]
) -> dict[uuid.UUID, tuple[object, ...]]:
    runs = await runs_by_id(engine, list(run_ids))
    return {
        run_id: (run.state, run.attempts, run.result, run.error, run.finished_at)
        for run_id, run in runs.items()
    }


def holder_of(processes: Processes, child_pid: int) -> Proc:
    """The worker whose process group the child that reported `child_pid` belongs to."""
    group = os.getpgid(child_pid)
    [holder] = [proc for proc in processes.started if proc.popen.pid == group]
    return holder


async def started_pids(redis: Redis) -> list[int]:
    return [int(str(r["started"])) for r in await reports(redis) if "started" in r]


async def user_name(engine: AsyncEngine, user_id: int) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(User.full_name).where(User.id == user_id))


async def test_a_thawed_worker_does_not_commit_a_run_that_went_to_another_worker(
    processes: Processes, e2e_engine: AsyncEngine, e2e_redis: Redis
) -> None:
    """The fence: the frozen worker's transaction is still open when it thaws (frozen for less
    than WORKER_IDLE_IN_TRANSACTION_TIMEOUT), and its commit would otherwise go through."""
    processes.env.update(SHORT)
    workers = [processes.worker(app=PROBE_APP, concurrency=1) for _ in range(2)]
    [user_id] = await insert_users(e2e_engine, "fence@example.com")
    [run_id] = await publish(e2e_redis, SLOW_UPDATE.name, user_id=user_id, seconds=2)

    async def started_once() -> bool:
        return len(await started_pids(e2e_redis)) == 1

    await eventually(started_once, 30, "the slow update to start")
    first = holder_of(processes, (await started_pids(e2e_redis))[0])
    os.killpg(first.popen.pid, signal.SIGSTOP)
    try:

        async def claimed_again() -> bool:
            run = (await runs_by_id(e2e_engine, [run_id])).get(run_id)
            return run is not None and run.attempts == 2

        # The other worker claims it; its UPDATE then waits on the frozen one's row lock.
        await eventually(claimed_again, 4 * SHORT_TIMEOUT, "the run to go to the other worker")
    finally:
        os.killpg(first.popen.pid, signal.SIGCONT)

    async def done() -> bool:
        run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
        return run.state == TaskState.SUCCEEDED

    await eventually(done, 30, "the other worker to finish the run")
    [second] = [worker for worker in workers if worker is not first]

    async def superseded_logged() -> bool:
        return log_outcomes(first, run_id) == ["superseded"]

    await eventually(superseded_logged, 30, "the thawed worker to log its superseded attempt")
    assert log_outcomes(second, run_id) == ["succeeded"]
    run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
    assert (run.state, run.attempts, run.result) == (TaskState.SUCCEEDED, 2, 1)
    assert await user_name(e2e_engine, user_id) == "fence+", "the effect must commit once"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_live_worker_keeps_a_long_run_even_with_its_main_process_stopped_a_while(
    processes: Processes, e2e_engine: AsyncEngine, e2e_redis: Redis, pool: str
) -> None:
    """A run of three visibility periods on a healthy worker, whose main process is stopped
    for just under the stated bound in the middle of it, beside a worker that sweeps."""
    processes.env.update(SHORT)
    for _ in range(2):
        processes.worker(app=PROBE_APP, concurrency=1, pool=pool)
    [user_id] = await insert_users(e2e_engine, "live@example.com")
    [run_id] = await publish(
        e2e_redis, SLOW_UPDATE.name, user_id=user_id, seconds=3 * SHORT_TIMEOUT
    )

    async def started() -> bool:
        return len(await started_pids(e2e_redis)) >= 1

    await eventually(started, 30, "the slow update to start")
    holder = holder_of(processes, (await started_pids(e2e_redis))[0])
    bound = blocked_main_process_bound(SHORT_TIMEOUT)
    holder.signal(signal.SIGSTOP)  # the main process only: the run goes on in its child
    try:
        # The stimulus, not a wait for a condition: the main process stays stopped this long.
        await asyncio.sleep(bound - renew_interval(SHORT_TIMEOUT) / 2)
    finally:
        holder.signal(signal.SIGCONT)

    async def done() -> bool:
        run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
        return run.state == TaskState.SUCCEEDED

    await eventually(done, 6 * SHORT_TIMEOUT, "the long run to finish")
    run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
    assert run.attempts == 1, "a live worker's run was delivered again"
    assert len(await started_pids(e2e_redis)) == 1
    assert await user_name(e2e_engine, user_id) == "live+"


async def test_the_sweep_gives_a_dead_workers_runs_back_while_the_survivor_is_busy(
    processes: Processes, e2e_engine: AsyncEngine, e2e_redis: Redis
) -> None:
    """Under load the survivor never polls an empty queue (it does not even ask for more while
    its child is busy and its prefetch is full); kombu's sweep must run anyway, on its timer.
    The victim's runs come back to the front of the queue and finish while it is still long."""
    processes.env.update(SHORT)
    processes.worker(app=PROBE_APP, concurrency=1)  # the survivor
    victim = processes.worker(app=PROBE_APP, concurrency=1)
    user_ids = await insert_users(e2e_engine, *numbered_emails("busy", BUSY_RUNS))
    run_ids: list[uuid.UUID] = []
    for user_id in user_ids:
        run_ids += await publish(e2e_redis, SLOW_UPDATE.name, user_id=user_id, seconds=1)

    async def victim_started_one() -> bool:
        return any(os.getpgid(pid) == victim.popen.pid for pid in await started_pids(e2e_redis))

    await eventually(victim_started_one, 30, "the victim to start a run")
    killed_at = kill_whole_worker(victim)
    victims = held_run_ids(await e2e_redis.hgetall("unacked")) - await finished(e2e_engine)
    queued_when_it_died = await e2e_redis.llen("default")

    async def victims_done() -> bool:
        return await succeeded(e2e_engine, list(victims)) == len(victims)

    await eventually(victims_done, 4 * SHORT_TIMEOUT + BUSY_RUNS, "the victim's runs")
    recovered_in = time.monotonic() - killed_at
    still_queued = await e2e_redis.llen("default")
    print(
        f"\nbusy survivor: the victim's {len(victims)} runs finished {recovered_in:.1f}s after "
        f"the kill, with {still_queued} of {queued_when_it_died} messages still queued"
    )
    assert still_queued > 0, "the sweep waited for the survivor to run out of work"

    async def all_done() -> bool:
        return await succeeded(e2e_engine, run_ids) == BUSY_RUNS

    await eventually(all_done, 2 * BUSY_RUNS + 30, "every run")
    async with e2e_engine.connect() as conn:
        names = set(await conn.scalars(select(User.full_name).where(User.id.in_(user_ids))))
    assert names == {f"busy{i}+" for i in range(BUSY_RUNS)}, "each effect once"


async def finished(engine: AsyncEngine) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return set(
            await conn.scalars(select(TaskRun.id).where(TaskRun.state == TaskState.SUCCEEDED))
        )


async def test_a_retry_waiting_out_its_countdown_is_not_restored_and_multiplied(
    processes: Processes, e2e_redis: Redis
) -> None:
    processes.env.update(SHORT)
    for _ in range(2):
        processes.worker(app=PROBE_APP, concurrency=1)
    countdown = 3 * SHORT_TIMEOUT  # held, unacked, by a worker for three visibility periods
    await publish(e2e_redis, RETRY_ONCE, countdown=countdown)

    async def retried() -> bool:
        return any(r.get("retry_once") == 1 for r in await reports(e2e_redis))

    await eventually(retried, countdown + 30, "the retry to run after its countdown")

    async def settled() -> bool:
        return await e2e_redis.hlen("unacked") == 0 and await e2e_redis.llen("default") == 0

    await eventually(settled, 30, "the retry's message to be acked")
    # A copy restored while the retry was held would have run as well, after the same ETA.
    ran = sorted(int(str(r["retry_once"])) for r in await reports(e2e_redis))
    assert ran == [0, 1]


async def test_a_redis_restart_does_not_run_anything_twice_and_a_cut_off_run_returns_quickly(
    processes: Processes, e2e_engine: AsyncEngine, tmp_path: Path
) -> None:
    """A Redis that keeps its data (appendonly, as docs/deploy.md asks) restarted under two
    workers, one of them in a long run. The index of held messages survives with scores as old
    as the outage: nothing is restored for being unrenewed during it. Celery cancels the run
    whose connection went (its ack is lost); its message comes back after the visibility
    timeout, not after TASK_TIME_LIMIT + 30 s, and its effect commits once."""
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    argv = [*redis_server_argv(port), "--appendonly", "yes", "--dir", str(data)]
    redis_proc = processes.start("redis", argv)
    redis_proc.wait_for_output("Ready to accept connections")
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    processes.env.update(SHORT, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    for _ in range(2):
        processes.worker(app=PROBE_APP, concurrency=1)
    [user_id] = await insert_users(e2e_engine, "restart@example.com")
    [run_id] = await publish(redis, SLOW_UPDATE.name, user_id=user_id, seconds=SHORT_TIMEOUT)

    async def started() -> bool:
        return len(await started_pids(redis)) >= 1

    await eventually(started, 30, "the slow update to start")
    redis_proc.stop()
    restarted_at = time.monotonic()
    redis_proc = processes.start("redis", argv)
    redis_proc.wait_for_output("Ready to accept connections")

    async def done() -> bool:
        run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
        return run.state == TaskState.SUCCEEDED

    await eventually(done, 60, "the run to finish after the restart")
    print(f"\nRedis restart: the run finished {time.monotonic() - restarted_at:.1f}s later")
    assert await user_name(e2e_engine, user_id) == "restart+", "the effect must commit once"
    run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
    assert run.attempts <= 2
    await redis.aclose()


async def succeeded(engine: AsyncEngine, run_ids: list[uuid.UUID]) -> int:
    runs = await runs_by_id(engine, run_ids)
    return sum(run.state == TaskState.SUCCEEDED for run in runs.values())
