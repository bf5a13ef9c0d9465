"""Beat: its scheduler settings, and the schedule built from the contracts' `periodic`.

The entries' names are the contracts' `Periodic.entry` (beat's state in Redis is keyed by
them). Overrides (BEAT_SCHEDULE_OVERRIDES, and the older SCHEDULE_* variables) are applied by
`shared.schedules.effective_schedule`, the same function GET /schedules reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from celery.schedules import crontab

from shared.beat import REDBEAT_KEY_PREFIX
from shared.contracts import CONTRACTS, AnyContract
from shared.schedules import Cron, Every, Schedule, effective_schedule
from shared.settings import settings


def to_celery(schedule: Schedule) -> crontab | timedelta:
    if isinstance(schedule, Every):
        return timedelta(seconds=schedule.seconds)
    assert isinstance(schedule, Cron)
    minute, hour, day_of_month, month_of_year, day_of_week = schedule.fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def beat_schedule(contracts: Iterable[AnyContract]) -> dict[str, dict[str, object]]:
    """One entry per contract with a `periodic`, under its entry name."""
    entries: dict[str, dict[str, object]] = {}
    for contract in contracts:
        periodic = contract.periodic
        if periodic is None:
            continue
        if periodic.entry in entries:
            raise ValueError(f"two contracts declare the beat entry {periodic.entry!r}")
        entry: dict[str, object] = {
            "task": contract.name,
            "schedule": to_celery(effective_schedule(periodic)),
        }
        if periodic.kwargs:
            entry["kwargs"] = contract.args.model_validate(periodic.kwargs).model_dump(mode="json")
        if periodic.expires is not None:
            entry["options"] = {"expires": periodic.expires}
        entries[periodic.entry] = entry
    unknown = set(settings.beat_schedule_overrides) - set(entries)
    if unknown:
        raise ValueError(
            f"BEAT_SCHEDULE_OVERRIDES names no beat entry: {sorted(unknown)}; "
            f"the entries are {sorted(entries)}"
        )
    return entries


def beat_config() -> dict[str, object]:
    return {
        # Beat: schedule state (each entry's last_run_at) and a lock in Redis (celery-redbeat,
        # with the non-blocking lock and heartbeat of worker.beat). Only the lock holder sends.
        # It renews the lock to BEAT_LOCK_TIMEOUT (15 s) on every loop, at most
        # BEAT_MAX_LOOP_INTERVAL (5 s) apart, and a standby tries it as often: after a SIGKILL of
        # the holder another beat sends within 15 + 5 s of the holder's last renewal. Ticks that
        # fell due during that gap are not replayed: an interval entry is sent once on takeover,
        # then on its cadence again; a crontab entry whose time passed during the gap is sent
        # once, late. See docs/beat.md.
        "beat_scheduler": "worker.beat:HeartbeatScheduler",
        "redbeat_redis_url": settings.redis_url.get_secret_value(),
        "redbeat_key_prefix": REDBEAT_KEY_PREFIX,
        # Short socket timeouts: a tick never hangs on Redis for as long as the lock lasts; a
        # failed tick stops beat, and its pod restarts.
        "redbeat_redis_options": {"socket_connect_timeout": 5, "socket_timeout": 5},
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        "beat_max_loop_interval": settings.beat_max_loop_interval,
        "beat_schedule": beat_schedule(CONTRACTS.values()),
    }
