"""Beat's scheduler: celery-redbeat, with a lock taken without blocking and a heartbeat.

redbeat keeps the schedule (each entry's definition and last_run_at) in Redis and lets only the
holder of a Redis lock send. Out of the box it takes that lock in a `beat_init` handler that
blocks until it gets it, so a standby beat never reaches its loop and could not show it is
alive. Here the lock is tried once per tick, without blocking: a standby ticks every
BEAT_MAX_LOOP_INTERVAL seconds, touching its heartbeat and trying the lock, and sends nothing.

Timing (docs/beat.md): the holder renews the lock to BEAT_LOCK_TIMEOUT on every tick, at most
BEAT_MAX_LOOP_INTERVAL apart. A holder killed with SIGKILL leaves its lock to expire, so a standby
takes over at most BEAT_LOCK_TIMEOUT + BEAT_MAX_LOOP_INTERVAL (15 + 5 s) after the holder's last
renewal. A holder stopped normally releases the lock, and the standby takes over on its next
tick. A holder that finds its lock gone (paused longer than the timeout, or Redis lost the key)
sends nothing and goes back to standby.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import beat_init
from celery.utils.log import get_logger
from prometheus_client import Counter, Gauge
from redbeat.schedulers import (
    LUA_EXTEND_TO_SCRIPT,
    RedBeatScheduler,
    acquire_distributed_beat_lock,
    get_redis,
)
from redis.exceptions import LockNotOwnedError

from shared.beat import LAST_SENT_KEY
from worker.heartbeat import heartbeat_path, touch
from worker.probe import BEAT_HEARTBEAT

logger = get_logger("celery.beat")

# redbeat's blocking acquisition would keep a standby out of its loop; tick() takes the lock.
beat_init.disconnect(acquire_distributed_beat_lock)


@contextmanager
def _signals_deferred(*signums: signal.Signals) -> Iterator[None]:
    """Celery beat's SIGTERM handler raises SystemExit wherever the loop is. Within a send that
    loses a tick: its last_run_at is stored first, then the message is cut off. Held back
    until the tick is over, the signal stops beat between two ticks instead."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# Here, not in worker.metrics: only the beat process imports this module.
BEAT_TICKS = Counter("beat_ticks_sent_total", "Periodic tasks sent by beat", ["entry"])
BEAT_HOLDS_LOCK = Gauge(
    "beat_holds_lock", "1 while this beat holds the lock and sends", multiprocess_mode="livemax"
)


class HeartbeatScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat is untyped
    lock: Any = None  # the redis lock while this beat holds it; None on standby
    _said_standby = False

    def setup_schedule(self) -> None:
        """redbeat writes the code's entries and deletes those removed from the code since the
        last start; also delete any other entry found in Redis, so the code is the schedule."""
        super().setup_schedule()
        conf = self.app.redbeat_conf
        wanted = {self.Entry.generate_key(self.app, name) for name in conf.schedule}
        client = get_redis(self.app)
        for key in set(client.zrange(conf.schedule_key, 0, -1)) - wanted:
            with client.pipeline() as pipe:
                pipe.zrem(conf.schedule_key, key)
                pipe.delete(key)
                pipe.execute()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        touch(heartbeat_path(BEAT_HEARTBEAT))
        holds = self.lock is not None or self._try_acquire_lock()
        BEAT_HOLDS_LOCK.set(1 if holds else 0)
        if not holds:
            return float(self.max_interval)
        try:
            with _signals_deferred(signal.SIGTERM, signal.SIGINT):
                return float(super().tick(*args, **kwargs))
        except LockNotOwnedError:
            # Renewal comes first in redbeat's tick, so nothing was sent: another beat holds it.
            logger.warning("beat: Lost the lock")
            self.lock = None
            return float(self.max_interval)

    def apply_async(self, entry: Any, *args: Any, **kwargs: Any) -> Any:
        sent = super().apply_async(entry, *args, **kwargs)
        BEAT_TICKS.labels(entry.name).inc()
        # Recorded once the broker took the message, so GET /schedules tells what really went.
        get_redis(self.app).hset(LAST_SENT_KEY, entry.name, repr(time.time()))
        return sent

    def _try_acquire_lock(self) -> bool:
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, blocking=False)
        # redbeat's script renews to the full timeout instead of adding to what remains.
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            if not self._said_standby:
                logger.info("beat: Standing by: another beat holds the lock")
                self._said_standby = True
            return False
        logger.info("beat: Acquired lock")
        self.lock = lock
        self._said_standby = False
        # The schedule lives in Redis too: a Redis restarted without persistence has no entries
        # left, and this beat would hold the lock and send nothing, the outbox relay included,
        # until restarted. Write them again, as a start does.
        if not client.exists(self.app.redbeat_conf.schedule_key):
            logger.warning("beat: the schedule is gone from Redis; writing it again")
            self.setup_schedule()
        return True
