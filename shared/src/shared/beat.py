"""Beat's schedule state as celery-redbeat keeps it in Redis, read without redbeat or the worker.

The worker writes it (redbeat, with REDBEAT_KEY_PREFIX); the API reads it for GET /schedules.
Layout: a sorted set `<prefix>:schedule` of entry keys scored by next due time (UTC epoch
seconds), and per entry a hash whose `definition` and `meta` fields hold JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

from redis.asyncio import Redis

REDBEAT_KEY_PREFIX = "redbeat:"
SCHEDULE_KEY = REDBEAT_KEY_PREFIX + ":schedule"
# Our own record, beside redbeat's: entry name -> when beat last really sent it (UTC epoch
# seconds). redbeat's `last_run_at` is no such record: it is set when an entry is first
# written, before anything was sent, and rewritten before a send that may then fail.
LAST_SENT_KEY = "beat:last_sent"


async def read_last_sent(redis: Redis) -> dict[str, datetime]:
    """When beat last sent each entry; an entry never sent is absent."""
    raw = cast(dict[bytes, bytes], await redis.hgetall(LAST_SENT_KEY))
    return {name.decode(): datetime.fromtimestamp(float(at), UTC) for name, at in raw.items()}


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    task: str
    schedule: str
    next_run_at: datetime | None
    last_run_at: datetime | None


def _describe(schedule: dict[str, object]) -> str:
    if schedule.get("__type__") == "crontab":
        fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        return " ".join(str(schedule.get(f, "*")) for f in fields)
    if schedule.get("__type__") == "interval":
        return f"every {float(str(schedule.get('every'))):g}s"
    return str(schedule.get("__type__", "unknown"))


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, dict) or value.get("__type__") != "datetime":
        return None
    zone = value.get("timezone")
    tz = timezone(timedelta(seconds=float(zone))) if isinstance(zone, int | float) else UTC
    parts = ("year", "month", "day", "hour", "minute", "second", "microsecond")
    year, month, day, hour, minute, second, micro = (int(value.get(k, 0)) for k in parts)
    moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    return moment.astimezone(UTC)


async def read_schedule(redis: Redis) -> list[ScheduleEntry]:
    due = cast(list[tuple[bytes, float]], await redis.zrange(SCHEDULE_KEY, 0, -1, withscores=True))
    pipe = redis.pipeline(transaction=False)
    for key, _ in due:
        pipe.hmget(key, ["definition", "meta"])
    hashes = await pipe.execute()
    entries: list[ScheduleEntry] = []
    for (_, score), (definition_raw, meta_raw) in zip(due, hashes, strict=True):
        if not definition_raw:
            continue
        definition = json.loads(definition_raw)
        meta = json.loads(meta_raw) if meta_raw else {}
        entries.append(
            ScheduleEntry(
                name=str(definition.get("name")),
                task=str(definition.get("task")),
                schedule=_describe(definition.get("schedule") or {}),
                next_run_at=datetime.fromtimestamp(score, UTC) if score >= 0 else None,
                last_run_at=_datetime(meta.get("last_run_at")),
            )
        )
    return entries
