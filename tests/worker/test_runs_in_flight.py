"""`worker_runs_in_flight` counts the runs a worker holds: the part of the load that the
queue's length no longer shows once a worker has taken it (the autoscalers add the two;
docs/deploy.md, "Scaling")."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.fixtures.processes import Processes
from tests.fixtures.runs import publish
from tests.fixtures.waiting import eventually
from tests.test_observability import samples
from tests.worker.probe_tasks import PROBE_APP, SLOW_UPDATE, reports

NAME = "probe-kind"
IN_FLIGHT = ("worker_runs_in_flight", (("worker", NAME),))
QUEUED = ("worker_queue_length", (("queue", "default"),))


@pytest.mark.parametrize(
    ("pool", "concurrency"), [("threads", 4), ("prefork", 2)], ids=["concurrent", "prefork"]
)
async def test_a_saturated_worker_reports_what_it_holds_beside_what_still_waits(
    processes: Processes, e2e_redis: Redis, pool: str, concurrency: int
) -> None:
    worker = processes.worker(app=PROBE_APP, pool=pool, concurrency=concurrency, WORKER_NAME=NAME)
    url = worker.metrics_url
    assert url is not None
    assert samples(url)[IN_FLIGHT] == 0

    load = concurrency + 3
    await publish(e2e_redis, SLOW_UPDATE.name, count=load, user_id=0, seconds=4)
    await reports(e2e_redis, concurrency, timeout=30)  # every slot has started one

    # The runs the worker took have left the queue's list; the metric shows them.
    async def saturated() -> bool:
        now = samples(url)
        return now[IN_FLIGHT] >= concurrency and now[QUEUED] <= load - concurrency

    await eventually(saturated, 10, "the held runs in the metric, not in the queue")
    now = samples(url)
    assert concurrency <= now[IN_FLIGHT] < load, now
    assert 0 < now[QUEUED] + now[IN_FLIGHT] <= load, now

    async def drained() -> bool:
        now = samples(url)
        return now[IN_FLIGHT] == 0 and now[QUEUED] == 0

    await eventually(drained, 60, "every run to finish")
