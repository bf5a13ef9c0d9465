"""PostgreSQL unreachable (a proxy in front of it cut: live connections reset, new ones
refused) while the worker has runs to do and clients keep calling the API."""

import asyncio
import time

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import DATABASE_DOWN
from shared.models import TaskState
from tests.environment import E2E_DATABASE_URL
from tests.faults.stack import emails_per_address, own_redis
from tests.fixtures.api import ADMIN, CLIENT
from tests.fixtures.processes import Processes
from tests.fixtures.proxy import CuttableProxy
from tests.fixtures.runs import queue_welcome_runs, runs_by_id
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.users import insert_users, numbered_emails
from tests.fixtures.waiting import eventually

RUNS = 20
RETRYING = '"outcome": "retrying"'  # the worker's JSON log line for an attempt to be retried
OUTAGE_SECONDS = 6
# Retries at most a second apart. Full jitter in whole seconds draws a 0 s wait half the time,
# so a run can go through dozens of retries in a second or two: the budget is set far above
# what the outage can use up.
FAST_RETRIES = {"TASK_RETRY_BACKOFF_MAX": "1", "TASK_MAX_RETRIES": "1000"}


async def test_database_outage_tasks_retry_and_the_api_answers_503(
    db_proxy: CuttableProxy,
    processes: Processes,
    e2e_engine: AsyncEngine,
    smtp_server: Mailbox,
) -> None:
    redis, _ = own_redis(processes)
    through_proxy = E2E_DATABASE_URL.set(host="127.0.0.1", port=db_proxy.port)
    processes.env.update(
        DATABASE_URL=through_proxy.render_as_string(hide_password=False),
        **FAST_RETRIES,
        **smtp_env(smtp_server),
    )
    _, base = processes.api()
    worker = processes.worker()
    # Warm both sides up, so the cut also breaks pooled connections, not only new ones.
    [warm_user] = await insert_users(e2e_engine, *numbered_emails("warm", 1))
    [warm_run] = await queue_welcome_runs(e2e_engine, redis, [warm_user])
    smtp_server.wait_for(1)
    user_ids = await insert_users(
        e2e_engine, *numbered_emails("outage", RUNS)
    )  # straight to the server

    async with httpx.AsyncClient(base_url=base, headers=CLIENT, timeout=10) as http:
        assert (await http.get("/users")).status_code == 200
        db_proxy.cut()
        cut_at = time.monotonic()
        run_ids = await queue_welcome_runs(e2e_engine, redis, user_ids)

        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "down"
        calls = [
            await http.post("/users", json={"email": "down@example.com", "full_name": "Down"}),
            await http.get("/users"),
            await http.get(f"/users/{user_ids[0]}"),
            await http.get(f"/tasks/{warm_run}"),
            await http.get("/tasks", headers=ADMIN),
        ]
        for response in calls:
            assert response.status_code == 503, (response.request.url, response.text)
            assert response.json() == {"detail": DATABASE_DOWN}
            assert response.headers["Retry-After"]
        worker.wait_for_output(RETRYING, timeout=OUTAGE_SECONDS)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))  # the fault
        assert len(smtp_server.messages) == 1  # nothing sent while the database was away
        db_proxy.restore()
        restored_at = time.monotonic()

        async def all_succeeded() -> bool:
            runs = await runs_by_id(e2e_engine, run_ids)
            return all(r.state == TaskState.SUCCEEDED for r in runs.values())

        await eventually(all_succeeded, 30, "every run to succeed after the database returned")
        recovered_in = time.monotonic() - restored_at
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get(f"/users/{user_ids[0]}")).status_code == 200

    per_address = emails_per_address(smtp_server.messages)
    assert per_address == {
        "warm0@example.com": 1,
        **{f"outage{i}@example.com": 1 for i in range(RUNS)},
    }
    retries = worker.output().count(RETRYING)
    print(
        f"\n{RUNS} runs, {retries} retries during a {OUTAGE_SECONDS}s outage; "
        f"all done {recovered_in:.1f}s after the database returned"
    )
    assert " 500 " not in processes.started[1].output()  # the API's access log: never a 500
    await redis.aclose()
