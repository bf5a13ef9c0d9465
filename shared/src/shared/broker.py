"""Publishing tasks by name to the Celery worker, over Redis, without importing the worker.

This writes what `celery.send_task(name, kwargs=..., task_id=...)` would write: a Celery
protocol-2 message in kombu's Redis envelope, pushed onto the queue's list. Doing it here, with
`redis.asyncio`, lets the API publish without blocking its event loop and pipeline a whole batch
in one round trip; the end-to-end tests have a real worker consume these messages.

Message format: https://docs.celeryq.dev/en/stable/internals/protocol.html (version 2).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

ORIGIN = f"backend@{socket.gethostname()}"
REQUEST_ID_HEADER = "request_id"


class PublishError(Exception):
    """The broker did not take the messages (down, slow, or refused); they stay unpublished."""


@dataclass(frozen=True)
class TaskMessage:
    id: uuid.UUID
    name: str
    kwargs: Mapping[str, object]
    queue: str
    request_id: str | None = None

    def encode(self) -> str:
        task_id = str(self.id)
        body = json.dumps(
            [
                [],
                dict(self.kwargs),
                {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
            ]
        )
        headers = {
            "lang": "py",
            "task": self.name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            # Task arguments are ids, never personal data, but keep the log line short anyway.
            "kwargsrepr": ", ".join(sorted(self.kwargs)),
            "origin": ORIGIN,
            "ignore_result": True,
            REQUEST_ID_HEADER: self.request_id,
        }
        return json.dumps(
            {
                "body": base64.b64encode(body.encode()).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    "correlation_id": task_id,
                    "reply_to": "",
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": self.queue},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )


class Broker:
    """Publishes batches of task messages; each call either takes them all or raises."""

    def __init__(self, redis: Redis, timeout: float) -> None:
        self._redis = redis
        self._timeout = timeout

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=False)
        for message in messages:
            pipe.lpush(message.queue, message.encode())
        try:
            async with asyncio.timeout(self._timeout):
                await pipe.execute()
        except (TimeoutError, OSError, RedisError) as exc:
            raise PublishError(f"broker did not take {len(messages)} messages: {exc!r}") from exc

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._redis.ping())
        except (TimeoutError, OSError, RedisError):
            return False


def connect_redis(url: str, timeout: float) -> Redis:
    """A client whose every call gives up after `timeout`: a broker outage must never hang a
    request or a task. Connections open lazily, on the event loop that first uses them."""
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
