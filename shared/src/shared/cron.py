"""When a crontab entry next falls due, computed without Celery (the API image has none).

The expression is the one beat is given: five fields, `minute hour day-of-month month
day-of-week`, in UTC, parsed as Celery's `crontab` parses them (numbers, `*`, ranges that may
wrap, `/step`, comma lists, month and weekday names; Sunday is 0). One difference from POSIX
cron matters: when both day fields are restricted, Celery fires on days that match BOTH (the
13th AND a Friday), where POSIX cron fires on days that match EITHER. Beat is Celery, so this
follows Celery. tests/worker/test_cron.py checks it against `celery.schedules.crontab`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Every combination of month, day of month and weekday recurs within 28 years (the calendar's
# cycle, leap days included, this side of 2100); beyond that an expression never matches.
_HORIZON_DAYS = 366 * 28 + 7


class InvalidCron(ValueError):
    """Not an expression Celery's crontab accepts."""


def _number(token: str, low: int, count: int) -> int:
    if token.startswith("-"):
        raise InvalidCron("negative numbers are not supported")
    if token.isdigit():
        value = int(token)
    elif token[:3].lower() in _MONTHS:  # Celery tries month names first, in every field
        value = _MONTHS.index(token[:3].lower()) + 1
    elif token[:3].lower() in _WEEKDAYS:
        value = _WEEKDAYS.index(token[:3].lower())
    else:
        raise InvalidCron(f"not a number or a name: {token!r}")
    if not low <= value < low + count:
        raise InvalidCron(f"{value} is outside {low}-{low + count - 1}")
    return value


def _span(first: str, last: str, low: int, count: int) -> list[int]:
    start, end = _number(first, low, count), _number(last, low, count)
    if end < start:  # wraps around: 22-2 is 22, 23, 0, 1, 2
        return [*range(start, low + count), *range(low, end + 1)]
    return list(range(start, end + 1))


def _step(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise InvalidCron(f"not a step: {text!r}")
    return int(text)


def _field(spec: str, low: int, count: int) -> frozenset[int]:
    values: set[int] = set()
    for part in spec.split(","):
        if not part:
            raise InvalidCron("an empty list item")
        body, slash, step = part.partition("/")
        if body == "*":
            expanded = list(range(low, low + count))
        elif "-" in body:
            first, _, last = body.partition("-")
            if not first:
                raise InvalidCron("negative numbers are not supported")
            expanded = _span(first, last, low, count)
        elif slash:
            raise InvalidCron(f"a step needs a range or *: {part!r}")
        else:
            expanded = [_number(body, low, count)]
        values.update(expanded[:: _step(step)] if slash else expanded)
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # Sunday is 0

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        fields = expression.split()
        if len(fields) != 5:
            raise InvalidCron(f"five fields expected, got {expression!r}")
        minute, hour, day_of_month, month, day_of_week = fields
        return cls(
            _field(minute, 0, 60),
            _field(hour, 0, 24),
            _field(day_of_month, 1, 31),
            _field(month, 1, 12),
            _field(day_of_week, 0, 7),
        )

    def _day_matches(self, moment: datetime) -> bool:
        return (
            moment.month in self.months
            and moment.day in self.days_of_month
            and moment.isoweekday() % 7 in self.days_of_week  # AND, as Celery does
        )

    def next_after(self, moment: datetime) -> datetime | None:
        """The first minute strictly after `moment` (an aware UTC datetime) at which the entry
        falls due; None if no date ever matches (the 31st of February)."""
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for offset in range(_HORIZON_DAYS):
            current = day + timedelta(days=offset)
            if not self._day_matches(current):
                continue
            for hour in sorted(self.hours):
                for minute in sorted(self.minutes):
                    candidate = current.replace(hour=hour, minute=minute)
                    if candidate >= start:
                        return candidate
        return None
