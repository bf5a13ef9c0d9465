"""Log lines as a collector reads them: one JSON object per line, no terminal colour codes,
and one traceback per failed run."""

import uuid

import httpx
from redis.asyncio import Redis

from shared.broker import Broker, TaskMessage
from shared.contracts import PRUNE_LOGS
from tests.fixtures.processes import Processes
from tests.fixtures.waiting import wait_until

ESCAPE = "\x1b"


async def test_api_json_lines_carry_no_terminal_codes(processes: Processes) -> None:
    api, base = processes.api(LOG_FORMAT="json")
    async with httpx.AsyncClient(base_url=base) as http:
        for path in ("/docs", "/openapi.json", "/no-such-page"):
            await http.get(path)
    wait_until(lambda: "unmatched" in api.output(), 10, "the request lines")
    output = api.output()
    lines = api.log_lines()
    assert ESCAPE not in output
    assert not [line for line in lines if "color_message" in line]
    # uvicorn's own start-up lines go through our formatter too.
    assert any(str(line["message"]).startswith("Uvicorn running on") for line in lines)
    routes = {line.get("route") for line in lines if line.get("logger") == "api.requests"}
    assert {"/docs", "/openapi.json", "unmatched"} <= routes


async def test_a_failed_run_prints_its_traceback_once(
    processes: Processes, e2e_redis: Redis
) -> None:
    worker = processes.worker(LOG_FORMAT="json")
    run_id = uuid.uuid4()
    # Arguments its contract refuses: a permanent failure, not retried.
    bad = TaskMessage(run_id, PRUNE_LOGS.name, {"days": "thirty"}, "maintenance")
    await Broker(e2e_redis, timeout=5).publish([bad])

    def failed() -> bool:
        return any(
            line.get("task_id") == str(run_id) and line.get("outcome") == "failed"
            for line in worker.log_lines()
        )

    def celery_said_so() -> bool:  # Celery's own line comes after ours
        return any(
            line.get("logger") == "celery.app.trace" and line.get("task_id") == str(run_id)
            for line in worker.log_lines()
        )

    wait_until(failed, 30, "the run's failure line")
    wait_until(celery_said_so, 10, "Celery's line for the failed run")
    output = worker.output()
    assert ESCAPE not in output
    assert output.count("Traceback (most recent call last)") == 1, output[-6000:]
    assert "ValidationError" in output
    assert '"data"' not in output  # Celery's context, the task's arguments among it
