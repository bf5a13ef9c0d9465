"""What operators see: one request id from the API's request to the worker's log lines, and
metrics that move."""

import json
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from shared.broker import Broker, TaskMessage
from shared.contracts import PRUNE_LOGS
from tests.fixtures.api import CLIENT
from tests.fixtures.processes import Proc, Processes
from tests.fixtures.smtp import Mailbox
from tests.fixtures.waiting import eventually, wait_until


def task_lines(worker: Proc, request_id: str) -> list[dict[str, object]]:
    return [line for line in worker.log_lines() if line.get("request_id") == request_id]


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_request_id_follows_the_work_into_the_worker_log_also_through_the_relay(
    processes: Processes, smtp_server: Mailbox
) -> None:
    redis, port = processes.redis_server()
    processes.env.update(
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_server.port),
        OUTBOX_RELAY_INTERVAL="1",
        OUTBOX_GRACE_SECONDS="1",
    )
    api, base = processes.api()
    worker = processes.worker(pool="threads")  # the kind that runs emails and the relay
    async with httpx.AsyncClient(base_url=base, headers=CLIENT) as http:
        direct = await http.post(
            "/users",
            json={"email": "direct@example.com", "full_name": "D"},
            headers={"X-Request-ID": "req-direct"},
        )
        assert direct.headers["X-Request-ID"] == "req-direct"
        smtp_server.wait_for(1)
        # Stop Redis only once the direct run is acked: a worker whose ack meets a Redis going
        # away can die in kombu's clean-up (docs/deploy.md), which is not what this test is about.
        async with Redis.from_url(f"redis://127.0.0.1:{port}/0") as client:

            async def acked() -> bool:
                return await client.llen("default") == 0 and await client.hlen("unacked") == 0

            await eventually(acked, 10, "the direct run to be acked")

        redis.stop()  # the API cannot publish: the run waits in the outbox for the relay
        relayed = await http.post(
            "/users",
            json={"email": "relayed@example.com", "full_name": "R"},
            headers={"X-Request-ID": "req-relayed"},
        )
        assert relayed.status_code == 201
    processes.restart_redis(port)
    processes.beat()
    smtp_server.wait_for(2)

    def finished(request_id: str) -> bool:
        return any(line["message"] == "task finished" for line in task_lines(worker, request_id))

    wait_until(lambda: finished("req-relayed"), 20, "the relayed run's log line")
    for request_id in ("req-direct", "req-relayed"):
        started, done = (
            next(line for line in task_lines(worker, request_id) if line["message"] == message)
            for message in ("task started", "task finished")
        )
        assert started["task_name"] == done["task_name"] == "users.send_welcome_email"
        assert started["task_id"] == done["task_id"]
        assert done["outcome"] == "succeeded"
        assert isinstance(done["duration_ms"], float)
    assert any("left for the relay" in str(line["message"]) for line in api.log_lines())
    # No personal data at INFO: the worker logs runs by id, never the address.
    assert "relayed@example.com" not in worker.output()


async def test_worker_and_beat_metrics_move(processes: Processes, e2e_redis: Redis) -> None:
    worker = processes.worker(pool="threads")  # the per-task metrics of the concurrent runtime
    count = 7
    messages = [
        TaskMessage(uuid.uuid4(), PRUNE_LOGS.name, {"days": 30}, "maintenance")
        for _ in range(count)
    ]
    await Broker(e2e_redis, timeout=5).publish(messages)
    worker_url = worker.metrics_url
    assert worker_url is not None
    task = (("task", PRUNE_LOGS.name),)

    async def all_counted() -> bool:
        return samples(worker_url).get(("worker_tasks_succeeded_total", task)) == count

    await eventually(all_counted, 30, f"{count} succeeded tasks in the worker's metrics")
    worker_metrics = samples(worker_url)
    assert worker_metrics[("worker_tasks_started_total", task)] == count
    assert worker_metrics[("worker_task_duration_seconds_count", task)] == count
    assert worker_metrics[("worker_queue_length", (("queue", "maintenance"),))] == 0

    beat = processes.beat(BEAT_SCHEDULE_OVERRIDES=json.dumps({"prune-logs": "1"}))
    beat_url = beat.metrics_url
    assert beat_url is not None
    entry = (("entry", "prune-logs"),)

    async def ticking() -> bool:
        return samples(beat_url).get(("beat_ticks_sent_total", entry), 0) >= 2

    await eventually(ticking, 20, "beat to count its ticks")
    assert samples(beat_url)[("beat_holds_lock", ())] == 1
