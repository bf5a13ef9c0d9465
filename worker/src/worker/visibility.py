"""A short broker visibility timeout that every live worker keeps renewing for what it holds.

kombu's Redis transport emulates acks: a delivered message stays in the `unacked` hash, and
its delivery tag in the `unacked_index` sorted set, scored by the time it was delivered. Any
consumer's sweep (`restore_visible`) puts back on its queue every message whose score is older
than the visibility timeout. With the timeout at an hour, a dead worker's messages waited an
hour; with it short, a live worker's long task would be delivered a second time.

So the timeout is short (BROKER_VISIBILITY_TIMEOUT, 30 s) and a live worker renews it: every
RENEW_INTERVAL the consumer sets the score of every message it holds to now (`ZADD XX`). It
holds, in its channel's QoS, the messages its children run, those it has reserved, and those
it keeps until their ETA (a retry waiting out its countdown): all of them are renewed, so none
is restored while its worker lives. When the worker dies or freezes, the renewals stop and the
sweep of any other worker gives its messages back within the timeout plus one sweep interval.
The same tick marks the worker's landing lists alive and gives back the messages of landing
lists nobody marked within the timeout: fetched by a worker that died before recording them as
unacked (worker.transport).

The renewal is a timer on the consumer's event loop in the worker's main process, like the
heartbeat: it proves that the loop that receives, acks and supervises is alive, not just that
the process exists. The price is a bound: a main process blocked for longer than
`BLOCKED_MAIN_PROCESS_BOUND` (the timeout minus two renewal intervals: 20 s) may lose its
messages to the sweep (docs/operations.md states it). The run fence (worker.recording) keeps
such a duplicate from committing a second effect.

Scores are the workers' wall clocks, compared by the sweeping worker's clock (kombu's choice):
pods need clocks in step to well under RENEW_INTERVAL, which NTP gives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps
from kombu.transport.redis import Channel as RedisChannel

from shared.settings import settings
from worker.transport import Channel as LandingChannel

log = logging.getLogger("worker.visibility")

# Renewals per timeout: six leaves a renewal late by a loaded loop five chances before the
# sweep would take the message. Capped at 5 s so that a longer timeout still renews often
# enough for a worker configured with a shorter one (a rolling change of the setting).
RENEWALS_PER_TIMEOUT = 6
LONGEST_RENEW_INTERVAL = 5.0


def renew_interval(timeout: float) -> float:
    return min(timeout / RENEWALS_PER_TIMEOUT, LONGEST_RENEW_INTERVAL)


def blocked_main_process_bound(timeout: float) -> float:
    """The longest a worker's main process may stop (blocked, stopped, starved) and keep its
    messages: its last renewal may be one interval old when it stops; one more interval of
    margin for a timer that fires late."""
    return timeout - 2 * renew_interval(timeout)


RENEW_INTERVAL = renew_interval(settings.broker_visibility_timeout)
BLOCKED_MAIN_PROCESS_BOUND = blocked_main_process_bound(settings.broker_visibility_timeout)
# The sweep runs as often as the renewal, on every call (no throttle). Its lock must not
# outlive a worker killed while sweeping by much more than one interval: kombu's default (300 s)
# would stop every sweep for five minutes after such a kill.
SWEEP_INTERVAL = RENEW_INTERVAL
SWEEP_LOCK_SECONDS = max(1, round(RENEW_INTERVAL))
# At most this many tags per ZADD: a worker holding thousands of ETA messages does not send
# one command of megabytes.
RENEW_BATCH = 1000


def transport_options() -> dict[str, object]:
    """kombu's options for the timeout and the sweep, merged into the broker's."""
    return {
        "visibility_timeout": settings.broker_visibility_timeout,
        "unacked_restore_interval": SWEEP_INTERVAL,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": SWEEP_LOCK_SECONDS,
    }


def held_tags(qos: Any) -> list[str]:
    """The delivery tags a channel holds unacked: running, reserved and ETA-held messages.

    Acks are applied to `_delivered` lazily (`_dirty`), so tags acked since are left out. The
    copy is taken on the loop that changes the dict; the retry covers a timer thread (a worker
    without the event loop).
    """
    for _ in range(3):
        try:
            delivered = list(qos._delivered)
            dirty = set(qos._dirty)
            break
        except RuntimeError:  # changed size during iteration: take it again
            continue
    else:
        return []
    return [str(tag) for tag in delivered if tag not in dirty]


def renew(channel: RedisChannel, tags: Sequence[str], now: float | None = None) -> int:
    """Set the score of each tag still in the unacked index to `now`; returns how many.

    XX: a tag that is no longer there was acked, or restored by a sweep (then this worker lost
    it and the run fence decides), and must not come back as an index entry without a message.
    """
    if not tags:
        return 0
    score = time.time() if now is None else now
    renewed = 0
    with channel.conn_or_acquire() as client:
        for start in range(0, len(tags), RENEW_BATCH):
            batch = tags[start : start + RENEW_BATCH]
            # CH: count entries changed; XX never adds, so this counts the renewed ones.
            renewed += int(
                client.zadd(
                    channel.unacked_index_key, dict.fromkeys(batch, score), xx=True, ch=True
                )
            )
    return renewed


class VisibilityRenewal(bootsteps.StartStopStep):
    """A consumer step: renews the messages the task consumer holds every RENEW_INTERVAL."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        self.tref = parent.timer.call_repeatedly(RENEW_INTERVAL, self.renew_held, (parent,))

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    @staticmethod
    def renew_held(consumer: Any) -> None:
        task_consumer = getattr(consumer, "task_consumer", None)
        channel = getattr(task_consumer, "channel", None)
        if not isinstance(channel, RedisChannel):
            return  # not started yet, reconnecting, or another transport
        try:
            renew(channel, held_tags(channel.qos))
            if isinstance(channel, LandingChannel):
                channel.mark_alive()
                channel.reclaim_stale_landings(settings.broker_visibility_timeout)
        except Exception:  # a failed renewal must not stop the timer
            # Redis unreachable: the consumer reconnects on its own; the next tick tries again.
            log.warning("could not renew the messages this worker holds", exc_info=True)


def install(app: Celery) -> None:
    """Short visibility timeout, frequent sweep, and the renewal step in every worker."""
    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        **transport_options(),
    }
    app.conf.result_backend_transport_options = {
        **(app.conf.result_backend_transport_options or {}),
        "visibility_timeout": settings.broker_visibility_timeout,
    }
    app.steps["consumer"].add(VisibilityRenewal)
