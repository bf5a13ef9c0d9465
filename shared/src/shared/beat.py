"""What GET /schedules says about beat's entries, computed without Celery or redbeat.

The entries and their schedules come from the code (each contract's `periodic`, with the
overrides of `shared.schedules.effective_schedule`, as beat builds them), so the answer is the
same whether a beat runs or not. Two things come from Redis:

- when beat last really sent each entry: our own hash, LAST_SENT_KEY, which beat writes once the
  broker has taken the message (worker.beat). redbeat's own `last_run_at` is no such record: it
  is set when an entry is first written, before anything was sent, and rewritten just before a
  send that may then fail.
- nothing else: the next fire time is computed from the schedule (shared.cron for a crontab,
  with Celery's meaning), not read from redbeat's sorted set, whose due time for a crontab is
  an estimate made from that misleading `last_run_at`.

REDBEAT_KEY_PREFIX is the prefix of redbeat's keys (worker.schedule configures redbeat with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from redis.asyncio import Redis

from shared.contracts import CONTRACTS
from shared.cron import CronSchedule
from shared.schedules import Cron, Every, Schedule, effective_schedule

REDBEAT_KEY_PREFIX = "redbeat:"
SCHEDULE_KEY = REDBEAT_KEY_PREFIX + ":schedule"
LAST_SENT_KEY = "beat:last_sent"  # entry name -> UTC epoch seconds of beat's last real send


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    task: str
    schedule: str
    next_run_at: datetime | None
    last_run_at: datetime | None  # when beat last sent it; None before the first send


async def read_last_sent(redis: Redis) -> dict[str, datetime]:
    """When beat last sent each entry; an entry never sent is absent."""
    raw = cast(dict[bytes, bytes], await redis.hgetall(LAST_SENT_KEY))
    return {name.decode(): datetime.fromtimestamp(float(at), UTC) for name, at in raw.items()}


def next_fire(schedule: Schedule, now: datetime, last_sent: datetime | None) -> datetime | None:
    """When `schedule` next falls due after `now`.

    A crontab: its next matching minute after now (None if it never matches). An interval: one
    interval after the last send, or now if that is past (an overdue entry goes out as soon as
    a beat runs); None before the first send, which comes one interval after beat first writes
    the entry.
    """
    if isinstance(schedule, Cron):
        return CronSchedule.parse(schedule.expression).next_after(now)
    assert isinstance(schedule, Every)
    if last_sent is None:
        return None
    return max(last_sent + timedelta(seconds=schedule.seconds), now)


async def read_schedule(redis: Redis, now: datetime | None = None) -> list[ScheduleEntry]:
    """Every beat entry, in the order of the contracts."""
    moment = now or datetime.now(UTC)
    last_sent = await read_last_sent(redis)
    entries: list[ScheduleEntry] = []
    for contract in CONTRACTS.values():
        if contract.periodic is None:
            continue
        schedule = effective_schedule(contract.periodic)
        sent = last_sent.get(contract.periodic.entry)
        entries.append(
            ScheduleEntry(
                name=contract.periodic.entry,
                task=contract.name,
                schedule=schedule.describe(),
                next_run_at=next_fire(schedule, moment, sent),
                last_run_at=sent,
            )
        )
    return entries
