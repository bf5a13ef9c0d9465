"""shared.cron (what GET /schedules computes without Celery) against Celery's own crontab,
which is what beat runs: the same next fire time from any moment, for every expression."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import ParseException, crontab

from shared.contracts import CONTRACTS
from shared.cron import CronSchedule, InvalidCron
from shared.schedules import Cron, effective_schedule

# The entries' own expressions, and the shapes that trip implementations: both day fields
# restricted (Celery: the 13th AND a Friday; POSIX cron would take either), steps, wrapping
# ranges, names, leap days, month ends.
ENTRIES = [
    schedule.expression
    for contract in CONTRACTS.values()
    if contract.periodic is not None
    and isinstance(schedule := effective_schedule(contract.periodic), Cron)
]
EXPRESSIONS = [
    *ENTRIES,
    "15 3 * * *",
    "45 3 * * *",
    "0 12 13 * 5",
    "0 0 29 2 *",
    "0 0 29 2 1",
    "30 6 31 * *",
    "*/15 * * * *",
    "5-50/10 8-17 * * mon-fri",
    "0 22-2 * * *",
    "0 0 1,15 jan,jul sun",
    "59 23 28-31 * *",
    "* * * * *",
    "0 0 * * 6-1",
]
MOMENTS = 400


def celery_next(expression: str, moment: datetime) -> datetime:
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    schedule = crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        nowfun=lambda: moment,
    )
    # Beat's question: the entry last ran at `moment`; when is it next due?
    return moment + schedule.remaining_estimate(moment)


def moments(seed: int) -> list[datetime]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return [start + timedelta(seconds=rng.randrange(0, 6 * 365 * 86400)) for _ in range(MOMENTS)]


def test_every_crontab_entry_is_checked() -> None:
    assert len(ENTRIES) >= 2  # deactivate-inactive-users and prune-logs


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_next_fire_time_agrees_with_celerys_crontab(expression: str) -> None:
    schedule = CronSchedule.parse(expression)
    for moment in moments(hash(expression) % 1000):
        ours = schedule.next_after(moment)
        assert ours == celery_next(expression, moment), (expression, moment)


def test_both_day_fields_restricted_means_both_not_either() -> None:
    friday_13th = CronSchedule.parse("0 12 13 * 5").next_after(datetime(2026, 1, 1, tzinfo=UTC))
    assert friday_13th == datetime(2026, 2, 13, 12, 0, tzinfo=UTC)  # POSIX cron: Jan 2 (a Friday)


def test_an_expression_that_never_matches_has_no_next_fire_time() -> None:
    assert CronSchedule.parse("0 0 31 2 *").next_after(datetime(2026, 1, 1, tzinfo=UTC)) is None


REFUSED = [
    "* * * *",
    "60 * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "*/0 * * * *",
    "5/15 * * * *",
    "-1 * * * *",
    "* * * * 7",
    "* * * * xyz",
    "1,,2 * * * *",
]


@pytest.mark.parametrize("expression", REFUSED)
def test_expressions_celery_refuses_are_refused(expression: str) -> None:
    fields = expression.split()
    if len(fields) == 5:
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        with pytest.raises((ValueError, ParseException)):
            crontab(minute, hour, day_of_week, day_of_month, month_of_year)
    with pytest.raises(InvalidCron):
        CronSchedule.parse(expression)
