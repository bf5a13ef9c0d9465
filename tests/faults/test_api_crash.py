"""The API process dying after a request committed and before it published."""

import sys

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import TaskRun, TaskState, User
from tests.faults.crash_after_commit import CRASH_EXIT_CODE
from tests.faults.stack import own_redis
from tests.fixtures.api import CLIENT
from tests.fixtures.ports import free_port
from tests.fixtures.processes import FAST_RELAY, Processes
from tests.fixtures.runs import runs_by_id
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.waiting import eventually, wait_until


async def test_api_killed_between_commit_and_publish_the_relay_delivers(
    processes: Processes, e2e_engine: AsyncEngine, smtp_server: Mailbox
) -> None:
    redis, _ = own_redis(processes)
    processes.env.update(**FAST_RELAY, **smtp_env(smtp_server))
    port = free_port()
    crashing = processes.start(
        "api-crashing",
        [
            sys.executable, "-m", "uvicorn", "tests.faults.crash_after_commit:create_app",
            "--factory", "--host", "127.0.0.1", "--port", str(port),
        ],
    )  # fmt: skip
    crashing.wait_for_output("Application startup complete")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=CLIENT) as http:
        with pytest.raises(httpx.TransportError):  # the connection drops: no answer at all
            await http.post("/users", json={"email": "crash@example.com", "full_name": "Crash"})
    assert crashing.popen.wait(timeout=10) == CRASH_EXIT_CODE

    async with e2e_engine.connect() as conn:
        user_id = await conn.scalar(select(User.id).where(User.email == "crash@example.com"))
        [run] = (await conn.execute(select(TaskRun))).all()
    assert user_id is not None, "the request's transaction had committed"
    assert run.state == TaskState.QUEUED
    assert run.published_at is None  # nobody published it
    assert await redis.llen("default") == 0

    # A healthy stack comes back; nothing in it knows about this run but the row.
    _, base = processes.api()
    processes.worker()
    processes.beat()

    async def delivered() -> bool:
        done = (await runs_by_id(e2e_engine, [run.id]))[run.id]
        return done.state == TaskState.SUCCEEDED

    await eventually(delivered, 30, "the relay to deliver the orphaned run")
    wait_until(lambda: len(smtp_server.messages) >= 1, 10, "the welcome email")
    done = (await runs_by_id(e2e_engine, [run.id]))[run.id]
    assert done.published_at is not None
    assert done.published_at >= done.created_at
    assert done.attempts == 1
    assert done.result is True
    assert [str(m["To"]) for m in smtp_server.messages] == ["crash@example.com"]
    async with httpx.AsyncClient(base_url=base, headers=CLIENT) as http:
        user = (await http.get(f"/users/{user_id}")).json()
        assert user["email"] == "crash@example.com"
        assert (await http.get(f"/tasks/{run.id}")).json()["state"] == "SUCCEEDED"
    assert "outbox.relay" in "".join(p.output() for p in processes.started if p.name == "worker")
    await redis.aclose()
