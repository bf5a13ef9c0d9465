"""Periodic schedules as plain data, declared on a task's contract.

No Celery here: the API image has no Celery, and it reads these (GET /schedules) as the worker
does. `worker.schedule` turns them into Celery's `crontab` and interval entries for beat.

A schedule is either a `Cron` (five crontab fields, UTC, with Celery's meaning: day of month
AND day of week when both are restricted) or an `Every` (a fixed interval in seconds). Tests and
operators change one without a new setting per entry: BEAT_SCHEDULE_OVERRIDES is a JSON object
from entry name to a crontab expression or a number of seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.settings import settings


@dataclass(frozen=True)
class Cron:
    """`Cron("15 3 * * *")`: minute, hour, day of month, month, day of week, in UTC."""

    expression: str

    def __post_init__(self) -> None:
        if len(self.expression.split()) != 5:
            raise ValueError(
                f"a crontab needs five fields (minute hour day-of-month month day-of-week), "
                f"got {self.expression!r}"
            )

    @property
    def fields(self) -> tuple[str, str, str, str, str]:
        minute, hour, day_of_month, month_of_year, day_of_week = self.expression.split()
        return minute, hour, day_of_month, month_of_year, day_of_week

    def describe(self) -> str:
        return " ".join(self.fields)


@dataclass(frozen=True)
class Every:
    """A fixed interval: `Every(5)` is every five seconds."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"an interval must be positive, got {self.seconds!r}")

    def describe(self) -> str:
        return f"every {self.seconds:g}s"


Schedule = Cron | Every


@dataclass(frozen=True)
class Periodic:
    """How beat runs a task: under `entry` (beat's state in Redis is keyed by this name, so
    renaming it forgets the entry's last run), on `schedule`, with `kwargs`.

    `expires` (seconds): a message not started by then is dropped, so ticks sent while no worker
    runs do not pile up. `setting`: an older environment variable that still overrides this
    entry's schedule (BEAT_SCHEDULE_OVERRIDES is the one way for new entries).
    """

    entry: str
    schedule: Schedule
    kwargs: Mapping[str, object] = field(default_factory=dict)
    expires: float | None = None
    setting: str | None = None


def parse_schedule(value: str) -> Schedule:
    """`"15 3 * * *"` is a crontab (UTC); a bare number is an interval in seconds."""
    try:
        return Every(float(value))
    except ValueError as exc:
        if "positive" in str(exc):
            raise
    return Cron(value)


def effective_schedule(periodic: Periodic) -> Schedule:
    """The schedule beat uses for `periodic`: BEAT_SCHEDULE_OVERRIDES[entry], else the older
    setting named on the entry if it is set, else the code's."""
    override = settings.beat_schedule_overrides.get(periodic.entry)
    if override is not None:
        return parse_schedule(override)
    if periodic.setting is not None:
        value = getattr(settings, periodic.setting.lower())
        if value:
            return parse_schedule(str(value))
    return periodic.schedule
