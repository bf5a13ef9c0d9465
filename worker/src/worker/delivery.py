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
        # Defaults for every task; a contract may set its own (worker.decorator).
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Redis redelivers an unacked message after the visibility timeout: it must outlast the
        # longest task (the hard time limit), or a running task is delivered a second time.
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout,
            # kombu sweeps for messages past their visibility timeout every interval x throttle
            # seconds (10 x 10 by default): a message a killed worker held came back up to 100 s
            # late. One cheap ZRANGE every few seconds makes the timeout the actual delay.
            "unacked_restore_interval": min(10, settings.broker_visibility_timeout),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        "result_backend_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout
        },
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
