"""Publishes committed runs in the background, so no request waits for the broker.

A request commits its rows and answers; the session's commit hook (shared.runs.enqueue,
installed in api.main) has handed the runs it inserted to `submit`. The publisher sends them
in batches (one Redis round trip, one UPDATE per batch). When the broker is down or slow, a
batch is given up after PUBLISH_TIMEOUT and its rows stay unpublished: the relay sends them.
If this process dies with runs still in memory, the relay sends those too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.broker import Broker, PublishError
from shared.models import TaskRun
from shared.runs.outbox import publish_committed

log = logging.getLogger(__name__)

BATCH_SIZE = 100


class Publisher:
    def __init__(self, broker: Broker, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._broker = broker
        self._sessions = sessions
        self._queue: asyncio.Queue[TaskRun] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publisher")

    def submit(self, runs: Sequence[TaskRun]) -> None:
        for run in runs:
            self._queue.put_nowait(run)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_SIZE and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._publish(batch)

    async def _publish(self, batch: list[TaskRun]) -> None:
        try:
            await publish_committed(self._broker, self._sessions, batch)
        except PublishError as exc:
            log.warning("%d runs left for the relay: %s", len(batch), exc)
        except Exception:  # the database may be down: the rows are safe, the relay will send
            log.exception("could not record %d published runs", len(batch))

    async def close(self, seconds: float) -> None:
        """Send what is queued, within `seconds`; the relay covers anything left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending: list[TaskRun] = []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._publish(pending)
