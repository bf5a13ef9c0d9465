"""The task runtime in a real prefork worker, against the real broker and database."""

import os
import signal
from collections import defaultdict

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import Broker, TaskMessage
from shared.contracts import SEND_WELCOME_EMAIL
from shared.models import TaskState, User
from tests.fixtures.postgres import connections_of
from tests.fixtures.processes import Processes
from tests.fixtures.runs import publish, runs_by_id, wait_for_state
from tests.fixtures.smtp import Mailbox
from tests.fixtures.users import insert_users
from tests.fixtures.waiting import eventually
from tests.worker.probe_tasks import PROBE_APP, SLOW_UPDATE, reports

LOOP_ERRORS = ("attached to a different loop", "another operation is in progress", "loop is closed")

# The prefork kind and the concurrent kind (many runs in flight on one loop).
BOTH_POOLS = pytest.mark.parametrize("pool", ["prefork", "threads"])


async def test_each_child_reuses_its_own_connections(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine
) -> None:
    pool_size = 2
    worker = processes.worker(app=PROBE_APP, concurrency=2, WORKER_DB_POOL_SIZE=str(pool_size))
    await publish(e2e_redis, "tests.backend_pid", count=250)
    done = await reports(e2e_redis, 250)
    peak_connections = await connections_of(e2e_engine, "backend.worker")

    backends_by_process: dict[int, set[int]] = defaultdict(set)
    processes_by_backend: dict[int, set[int]] = defaultdict(set)
    tasks_by_process: dict[int, int] = defaultdict(int)
    for report in done:
        backends_by_process[report["os_pid"]].add(report["backend_pid"])
        processes_by_backend[report["backend_pid"]].add(report["os_pid"])
        tasks_by_process[report["os_pid"]] += 1

    assert len(done) == 250
    assert all(len(pids) == 1 for pids in processes_by_backend.values()), "a connection shared"
    assert all(len(b) <= pool_size for b in backends_by_process.values()), backends_by_process
    assert len(tasks_by_process) == 2
    assert all(n >= 20 for n in tasks_by_process.values()), tasks_by_process
    assert peak_connections <= 2 * pool_size
    assert not any(error in worker.output() for error in LOOP_ERRORS)


@BOTH_POOLS
async def test_the_asyncio_run_form_still_works_for_many_tasks(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine, pool: str
) -> None:
    worker = processes.worker(app=PROBE_APP, concurrency=2, pool=pool)
    await publish(e2e_redis, "tests.backend_pid_asyncio_run", count=60)
    done = await reports(e2e_redis, 60)
    assert len(done) == 60
    assert len({r["os_pid"] for r in done}) <= 2
    assert await connections_of(e2e_engine, "backend.worker") == 0  # each closed with its loop
    assert "Traceback" not in worker.output()


@BOTH_POOLS
async def test_welcome_email_arrives_once_even_when_enqueued_twice(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine, smtp_server: Mailbox, pool: str
) -> None:
    """On the concurrent worker the three deliveries run at once: the claim keeps it to one."""
    [user_id] = await insert_users(e2e_engine, "ada@example.com")
    runs = await publish(e2e_redis, SEND_WELCOME_EMAIL.name, count=2, user_id=user_id)
    # The same run delivered twice, as at-least-once delivery allows.
    duplicate = TaskMessage(runs[0], SEND_WELCOME_EMAIL.name, {"user_id": user_id}, "default")
    await Broker(e2e_redis, timeout=5).publish([duplicate])
    processes.worker(pool=pool, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_server.port))

    async def all_succeeded() -> bool:
        states = await runs_by_id(e2e_engine, runs)
        return len(states) == 2 and all(r.state == TaskState.SUCCEEDED for r in states.values())

    await eventually(all_succeeded, 30, "both runs to succeed")
    assert len(smtp_server.to("ada@example.com")) == 1
    # Each run says whether it sent: one True, except when the duplicate delivery of the first
    # run claimed it while its first attempt was sending (that attempt then records nothing
    # but the email's stamp, and both runs find the email sent).
    results = sorted(str(r.result) for r in (await runs_by_id(e2e_engine, runs)).values())
    assert results in (["False", "True"], ["False", "False"])


async def test_a_child_killed_mid_task_gets_its_message_again_and_applies_it_once(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine
) -> None:
    [user_id] = await insert_users(e2e_engine, "k@example.com")
    processes.worker(app=PROBE_APP, concurrency=1)
    [run_id] = await publish(e2e_redis, SLOW_UPDATE.name, user_id=user_id, seconds=3)
    [first] = await reports(e2e_redis, 1)
    os.kill(first["started"], signal.SIGKILL)

    run = await wait_for_state(e2e_engine, run_id, TaskState.SUCCEEDED, timeout=60)
    assert run.attempts == 2
    async with e2e_engine.connect() as conn:
        name = await conn.scalar(select(User.full_name).where(User.id == user_id))
    assert name == "k+"
