"""GET /schedules on the real stack: uvicorn and `celery beat` processes on one Redis index.

Before any beat, with a beat, after a beat restart and with no beat running, it reports each
entry's schedule, the next time it falls due (computed from the schedule) and the last time
beat really sent it (taken from beat's log here, to compare)."""

from datetime import UTC, datetime

import httpx
import pytest

from shared.cron import CronSchedule
from tests.fixtures.api import ADMIN
from tests.fixtures.processes import Proc, Processes
from tests.fixtures.waiting import wait_until

INTERVAL = 2.0
# prune-logs every 2 s; the relay silenced; deactivate-inactive-users stays on its crontab.
OVERRIDES = {
    "BEAT_SCHEDULE_OVERRIDES": f'{{"prune-logs": "{INTERVAL:g}"}}',
    "OUTBOX_RELAY_INTERVAL": "3600",
}
SENT = "Scheduler: Sending due task prune-logs"
NIGHTLY = "15 3 * * *"


def entries(base: str) -> dict[str, dict[str, str | None]]:
    response = httpx.get(f"{base}/schedules", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def sends(*beats: Proc) -> list[float]:
    return sorted(
        datetime.fromisoformat(str(line["time"])).timestamp()
        for beat in beats
        for line in beat.log_lines()
        if str(line["message"]).startswith(SENT)
    )


def at(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value).timestamp()


def assert_nightly_is_computed(entry: dict[str, str | None]) -> None:
    """The crontab entry beat never sent: no last send, and its real next time (not an
    estimate from when beat wrote the entry)."""
    assert entry["schedule"] == NIGHTLY
    assert entry["last_run_at"] is None
    cron = CronSchedule.parse(NIGHTLY)
    now = datetime.now(UTC)
    expected = cron.next_after(now)
    assert expected is not None
    assert at(entry["next_run_at"]) == pytest.approx(expected.timestamp(), abs=60)
    next_at = datetime.fromtimestamp(at(entry["next_run_at"]), UTC)
    assert (next_at.hour, next_at.minute, next_at.second) == (3, 15, 0)


def test_schedules_before_with_across_a_restart_of_and_without_beat(
    processes: Processes,
) -> None:
    processes.env.update(OVERRIDES)
    _, base = processes.api()

    never = entries(base)  # no beat has ever run
    assert never["prune-logs"]["schedule"] == f"every {INTERVAL:g}s"
    assert never["prune-logs"]["last_run_at"] is None
    assert never["prune-logs"]["next_run_at"] is None
    assert_nightly_is_computed(never["deactivate-inactive-users"])

    first = processes.beat("beat")
    wait_until(lambda: len(sends(first)) >= 2, 30, "two sends of prune-logs")
    running = entries(base)
    last = at(running["prune-logs"]["last_run_at"])
    # The last send beat logged before the request (one more may have gone since).
    assert any(abs(last - sent) < 0.5 for sent in sends(first))
    assert at(running["prune-logs"]["next_run_at"]) == pytest.approx(last + INTERVAL, abs=0.01)
    assert_nightly_is_computed(running["deactivate-inactive-users"])
    first.stop()

    stopped = entries(base)  # no beat running: the last send stays, the entry is overdue
    assert at(stopped["prune-logs"]["last_run_at"]) == pytest.approx(sends(first)[-1], abs=0.5)
    assert at(stopped["prune-logs"]["next_run_at"]) >= at(stopped["prune-logs"]["last_run_at"])
    assert_nightly_is_computed(stopped["deactivate-inactive-users"])

    second = processes.beat("beat")
    wait_until(lambda: len(sends(second)) >= 1, 30, "a send of the restarted beat")
    restarted = entries(base)
    assert at(restarted["prune-logs"]["last_run_at"]) >= sends(second)[0] - 0.5
    assert at(restarted["prune-logs"]["last_run_at"]) > at(stopped["prune-logs"]["last_run_at"])
    assert_nightly_is_computed(restarted["deactivate-inactive-users"])
    second.stop()
