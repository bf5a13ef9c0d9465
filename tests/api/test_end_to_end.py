"""The whole path with real processes: uvicorn, a prefork worker, beat, SMTP, Redis.

Runs lost by a Redis restart, and larger broker outages, are in tests/faults/."""

import asyncio
import time

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import TaskRun, TaskState
from tests.fixtures.api import CLIENT
from tests.fixtures.processes import FAST_RELAY, Processes
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.waiting import eventually


async def sign_up(http: httpx.AsyncClient, count: int, prefix: str) -> list[dict[str, object]]:
    async def one(i: int) -> dict[str, object]:
        started = time.monotonic()
        response = await http.post(
            "/users", json={"email": f"{prefix}{i}@example.com", "full_name": f"U {i}"}
        )
        assert response.status_code == 201, response.text
        assert time.monotonic() - started < 2, "a sign-up took 2 s or more"
        body: dict[str, object] = response.json()
        return body

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def unfinished(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(TaskRun).where(TaskRun.state != TaskState.SUCCEEDED)
        )
    return int(count or 0)


async def test_sign_up_sends_one_welcome_email_and_the_run_succeeds(
    processes: Processes, smtp_server: Mailbox
) -> None:
    processes.env.update(smtp_env(smtp_server))
    _, base = processes.api()
    processes.worker()
    async with httpx.AsyncClient(base_url=base, headers=CLIENT) as http:
        [user] = await sign_up(http, 1, "e2e")
        smtp_server.wait_for(1)

        async def succeeded() -> bool:
            run = (await http.get(f"/tasks/{user['welcome_run_id']}")).json()
            return bool(run["state"] == "SUCCEEDED")

        await eventually(succeeded, 30, "the welcome run to succeed")
        run = (await http.get(f"/tasks/{user['welcome_run_id']}")).json()
    assert run["result"] is True
    assert run["published_at"] is not None
    assert len(smtp_server.to("e2e0@example.com")) == 1


async def test_broker_outage_sign_ups_still_succeed_and_every_email_arrives_once(
    processes: Processes, smtp_server: Mailbox, e2e_engine: AsyncEngine
) -> None:
    redis, port = processes.redis_server()
    processes.env.update(
        REDIS_URL=f"redis://127.0.0.1:{port}/0", **FAST_RELAY, **smtp_env(smtp_server)
    )
    _, base = processes.api()
    redis.stop()
    async with httpx.AsyncClient(base_url=base, headers=CLIENT) as http:
        await sign_up(http, 40, "outage")
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["broker"] == "down"

    processes.restart_redis(port)
    processes.worker()
    processes.beat()
    smtp_server.wait_for(40, timeout=60)

    async def all_done() -> bool:
        return await unfinished(e2e_engine) == 0

    await eventually(all_done, 30, "every run to succeed")
    addresses = sorted(str(m["To"]) for m in smtp_server.messages)
    assert addresses == sorted(f"outage{i}@example.com" for i in range(40))


async def test_an_idn_address_gets_its_welcome_through_a_server_without_smtputf8(
    processes: Processes, smtp_server: Mailbox
) -> None:
    """The API stores the domain as IDNA, so the worker needs no SMTPUTF8 for it; an address
    whose local part is not ASCII is refused up front (SMTP_UTF8 is off), not failed later."""
    processes.env.update(smtp_env(smtp_server))
    _, base = processes.api()
    processes.worker()
    async with httpx.AsyncClient(base_url=base, headers=CLIENT) as http:
        created = await http.post("/users", json={"email": "zoe@exämple.com", "full_name": "Zoe"})
        assert created.status_code == 201, created.text
        user = created.json()
        assert user["email"] == "zoe@xn--exmple-cua.com"
        refused = await http.post("/users", json={"email": "zoë@example.com", "full_name": "Z"})
        assert refused.status_code == 422
        assert "SMTPUTF8" in refused.text

        async def succeeded() -> bool:
            run = (await http.get(f"/tasks/{user['welcome_run_id']}")).json()
            return bool(run["state"] == "SUCCEEDED")

        await eventually(succeeded, 30, "the welcome run to succeed")
    assert len(smtp_server.to("zoe@xn--exmple-cua.com")) == 1
