"""Redis going away: stopped while sign-ups flow, and restarted (without persistence) while
runs wait in its queues."""

import asyncio
import contextlib
import json
import signal
import time

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contracts import RELAY_OUTBOX, SEND_WELCOME_EMAIL
from shared.models import TaskRun, TaskState, User
from shared.runs.outbox import DEAD_RUN_MARGIN
from tests.faults.stack import emails_per_address, own_redis
from tests.fixtures.api import CLIENT
from tests.fixtures.processes import FAST_RELAY, Proc, Processes
from tests.fixtures.runs import count_runs, publish, runs_by_id, unfinished_runs
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually, wait_until
from tests.worker.probe_tasks import PROBE_APP, REPORTS_KEY, SLOW_UPDATE

SIGN_UPS = 200
OUTAGE_SECONDS = 10
# Requests are spread over the outage and a little either side of it.
SPREAD_SECONDS = OUTAGE_SECONDS + 4
ANSWER_WITHIN = 2.0
# Celery cancels the tasks running when its broker connection goes, and the restarted Redis has
# no copy of their messages: such a run stays STARTED until the relay's repair publishes it
# again, TASK_TIME_LIMIT + 30 s after it started. Short limits bring that inside the test.
SHORT_TIME_LIMITS = {"TASK_SOFT_TIME_LIMIT": "3", "TASK_TIME_LIMIT": "4"}


def relay_runs(processes: Processes) -> int:
    """Relay ticks the beats sent (the relay itself is quiet: it logs only what it did)."""
    return sum(
        proc.output().count(f"Sending due task outbox-relay ({RELAY_OUTBOX.name})")
        for proc in processes.started
        if proc.name.startswith("beat")
    )


async def queued_welcome_runs(redis: Redis) -> int:
    """Welcome messages on the default queue; relay ticks from beat may sit beside them."""
    messages = [json.loads(m) for m in await redis.lrange("default", 0, -1)]
    return sum(m["headers"]["task"] == SEND_WELCOME_EMAIL.name for m in messages)


def crashed(proc: Proc) -> bool:
    return proc.popen.poll() is not None or "beat raised exception" in proc.output()


def revive(processes: Processes, beat: Proc, worker: Proc | None, relays_before: int) -> str:
    """Beat exits when Redis fails under it (a tick that cannot reach Redis is fatal, so a
    holder never keeps sending blind), and a worker can too (kombu, restoring its unacked
    messages on a connection already torn down); their restart policy brings them back. Waits
    until beat either sent two more relay ticks (so it lived through a tick) or exited, then
    does what Kubernetes does. Says what it restarted."""
    wait_until(
        lambda: crashed(beat) or relay_runs(processes) > relays_before + 1,
        20,
        "beat to send again or fail",
    )
    restarted = []
    if worker is not None and worker.popen.poll() is not None:
        processes.worker()
        restarted.append("worker")
    if crashed(beat):
        # A beat that logged its fatal error but has not exited yet is stuck on its way out:
        # its liveness probe (a stale heartbeat) would have it killed.
        with contextlib.suppress(ProcessLookupError):
            beat.signal(signal.SIGKILL)
        beat.popen.wait()
        processes.beat()
        restarted.append("beat")
    return ", ".join(restarted) or "nothing"


async def sign_up(http: httpx.AsyncClient, address: str) -> float:
    started = time.monotonic()
    response = await http.post("/users", json={"email": address, "full_name": "Outage"})
    took = time.monotonic() - started
    assert response.status_code == 201, response.text
    return took


async def test_redis_down_10s_while_200_sign_ups_flow(
    processes: Processes, smtp_server: Mailbox, e2e_engine: AsyncEngine
) -> None:
    redis, port = own_redis(processes)
    processes.env.update(**FAST_RELAY, **SHORT_TIME_LIMITS, **smtp_env(smtp_server))
    _, base = processes.api()
    worker = processes.worker()
    beat = processes.beat()
    server = processes.started[0]
    addresses = [f"flow{i}@example.com" for i in range(SIGN_UPS)]

    sends_before: list[int] = []

    async def outage() -> None:
        await asyncio.sleep(2)
        server.stop()
        await asyncio.sleep(OUTAGE_SECONDS)  # the fault itself
        sends_before.append(relay_runs(processes))
        processes.restart_redis(port)

    outage_done = asyncio.ensure_future(outage())
    async with httpx.AsyncClient(base_url=base, headers=CLIENT, timeout=10) as http:

        async def paced(i: int) -> float:
            await asyncio.sleep(i * SPREAD_SECONDS / SIGN_UPS)
            return await sign_up(http, addresses[i])

        durations = await asyncio.gather(*(paced(i) for i in range(SIGN_UPS)))
        await outage_done
    restored_at = time.monotonic()
    restarted = revive(processes, beat, worker, sends_before[0])
    slowest = max(durations)
    assert slowest < ANSWER_WITHIN, f"slowest sign-up took {slowest:.2f}s"

    async def all_done() -> bool:
        return len(smtp_server.messages) >= SIGN_UPS and await unfinished_runs(e2e_engine) == 0

    await eventually(all_done, 90, "every welcome run to succeed after Redis returned")
    recovered_in = time.monotonic() - restored_at
    per_address = emails_per_address(smtp_server.messages)
    duplicates = sum(n - 1 for n in per_address.values())
    # Emails are at least once: only a run cut off in flight, and so started twice, may send two.
    started_twice = await count_runs(
        e2e_engine, TaskRun.name == SEND_WELCOME_EMAIL.name, TaskRun.attempts > 1
    )
    print(
        f"\n{SIGN_UPS} sign-ups, slowest {slowest:.3f}s; all {len(smtp_server.messages)} emails "
        f"{recovered_in:.1f}s after Redis returned; {started_twice} runs started twice; "
        f"restarted: {restarted}"
    )
    assert set(per_address) == set(addresses)
    assert duplicates <= started_twice
    await redis.aclose()


async def test_runs_lost_by_a_redis_restart_complete_after_the_repair_bound(
    processes: Processes, smtp_server: Mailbox, e2e_engine: AsyncEngine
) -> None:
    redis, port = own_redis(processes)
    processes.env.update(**FAST_RELAY, **smtp_env(smtp_server))
    _, base = processes.api()
    beat = processes.beat()
    count = 30
    async with httpx.AsyncClient(base_url=base, headers=CLIENT) as http:
        for i in range(count):
            assert (await sign_up(http, f"lost{i}@example.com")) < ANSWER_WITHIN

    async def all_published() -> bool:
        return await count_runs(e2e_engine, TaskRun.published_at.is_(None)) == 0

    await eventually(all_published, 10, "the API to publish every run")
    assert await queued_welcome_runs(redis) == count  # queued: no worker yet
    processes.started[0].stop()  # no persistence: the queued messages are gone
    sends_before = relay_runs(processes)
    processes.restart_redis(port)
    restarted_at = time.monotonic()
    await redis.aclose()
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")  # the old connection died with it
    assert await queued_welcome_runs(redis) == 0
    processes.worker()
    restarted = revive(processes, beat, None, sends_before)

    async def all_done() -> bool:
        return await unfinished_runs(e2e_engine) == 0

    # Lost means QUEUED and published more than OUTBOX_REPAIR_AFTER ago; the relay looks every
    # OUTBOX_RELAY_INTERVAL. Bound: repair after + a relay tick + a beat loop + the work.
    repair_bound = float(FAST_RELAY["OUTBOX_REPAIR_AFTER"]) + 1 + 5 + 10
    await eventually(all_done, repair_bound, "every lost run to be published again and succeed")
    recovered_in = time.monotonic() - restarted_at
    async with e2e_engine.connect() as conn:
        runs = (await conn.execute(select(TaskRun).where(TaskRun.name != "outbox.relay"))).all()
    print(
        f"\n{count} runs lost by the restart, all done {recovered_in:.1f}s after it; "
        f"restarted: {restarted}"
    )
    assert len(runs) == count
    assert all(r.state == TaskState.SUCCEEDED and r.attempts == 1 for r in runs)
    assert emails_per_address(smtp_server.messages) == {
        f"lost{i}@example.com": 1 for i in range(count)
    }
    await redis.aclose()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_run_cut_off_by_a_redis_restart_is_repaired_after_its_time_limit(
    processes: Processes, e2e_engine: AsyncEngine, pool: str
) -> None:
    """Celery cancels the running late-ack run when its broker connection goes: prefork kills
    the child, the concurrent pool cancels the run's core on the loop; either way the attempt's
    uncommitted effect is gone."""
    redis, port = own_redis(processes)
    processes.env.update(**FAST_RELAY, **SHORT_TIME_LIMITS)
    [user_id] = await insert_users(e2e_engine, *numbered_emails("cut", 1))
    worker = processes.worker(app=PROBE_APP, concurrency=1, pool=pool)
    beat = processes.beat()
    # Sent as beat sends: the claim creates the run's row, STARTED.
    [run_id] = await publish(redis, SLOW_UPDATE.name, user_id=user_id, seconds=2.5)

    async def started() -> bool:
        return int(await redis.llen(REPORTS_KEY)) >= 1

    await eventually(started, 30, "the slow task to start")
    sends_before = relay_runs(processes)
    processes.started[0].stop()  # the message, delivered and unacked, is gone with Redis
    processes.restart_redis(port)
    cut_at = time.monotonic()
    await redis.aclose()
    restarted = revive(processes, beat, None, sends_before)
    if worker.popen.poll() is not None:
        processes.worker(app=PROBE_APP, concurrency=1, pool=pool)
        restarted = "worker" if restarted == "nothing" else f"{restarted}, worker"

    async def succeeded() -> bool:
        run = (await runs_by_id(e2e_engine, [run_id])).get(run_id)
        return run is not None and run.state == TaskState.SUCCEEDED

    # Bound: the time limit and the relay's margin, a relay tick, a beat loop, the work.
    time_limit = float(SHORT_TIME_LIMITS["TASK_TIME_LIMIT"])
    repair_bound = time_limit + DEAD_RUN_MARGIN.total_seconds() + 1 + 5 + 10
    await eventually(succeeded, repair_bound, "the cut-off run to be repaired and succeed")
    repaired_in = time.monotonic() - cut_at
    run = (await runs_by_id(e2e_engine, [run_id]))[run_id]
    async with e2e_engine.connect() as conn:
        name = await conn.scalar(select(User.full_name).where(User.id == user_id))
    print(f"\ncut off in flight; succeeded {repaired_in:.1f}s later; restarted: {restarted}")
    assert run.attempts == 2  # the cancelled attempt, then the repaired one
    assert name == "cut0+"  # the cancelled attempt's uncommitted update is gone: applied once
