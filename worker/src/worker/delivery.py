"""How messages travel: the broker, serialization, acknowledgement, queues and routes.

Every value here is a decision with a reason (tests/worker/test_config.py checks them).
"""

from __future__ import annotations

from kombu import Queue as KombuQueue

from shared.contracts import CONTRACTS, Queue
from shared.settings import settings


def delivery_config() -> dict[str, object]:
    return {
        "broker_url": settings.redis_url.get_secret_value(),
        # kombu's Redis transport with a fetch that keeps every message inside Redis until it
        # is recorded as unacked: a worker killed mid-fetch loses nothing (worker.transport).
        "broker_transport": "worker.transport:Transport",
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle message is code execution for whoever can write to Redis.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # The task-run row is the durable record of every outcome; Celery keeps no results.
        "task_ignore_result": True,
        # At-least-once: a message is acked after its task ends, and a child that dies mid-task
        # (SIGKILL, OOM) gives its message back. Every task is safe to run twice.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # With late acks, a prefetched message waits behind a long task; take one at a time.
        "worker_prefetch_multiplier": 1,
        # The soft limit is the runtime's (worker.recording): it cancels the core on the loop
        # and records the run as its contract says, in either pool. Celery's own soft limit
        # would raise in the thread waiting for the core instead. The hard limit is Celery's in
        # a prefork child; the concurrent pool's watchdog enforces it (worker.concurrent). A
        # contract may set its own (worker.decorator).
        "task_soft_time_limit": None,
        "task_time_limit": settings.task_time_limit,
        # Redis redelivers an unacked message after the visibility timeout. It is short (30 s)
        # and every live worker renews the messages it holds: worker.visibility adds the
        # timeout, the sweep's cadence and the renewal step.
        "broker_transport_options": {"socket_connect_timeout": 5, "socket_timeout": 30},
        # Losing the broker connection loses the acks of running late-ack tasks: they will be
        # redelivered, so stop them rather than let two copies run.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": [KombuQueue(queue.value, routing_key=queue.value) for queue in Queue],
        "task_default_queue": Queue.DEFAULT.value,
        "task_routes": {
            name: {"queue": contract.queue.value} for name, contract in CONTRACTS.items()
        },
        "task_create_missing_queues": False,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }
