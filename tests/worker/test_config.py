"""The delivery settings, decided explicitly (see worker/delivery.py for why each), and the
beat schedule built from the contracts (worker/schedule.py)."""

import json
from datetime import timedelta

import pytest
from celery.schedules import crontab
from redis import Redis

from shared.contracts import CONTRACTS, PRUNE_LOGS, Queue
from shared.schedules import Cron, Every, parse_schedule
from shared.settings import settings
from tests.environment import TEST_REDIS_URL
from worker.celery_app import app
from worker.schedule import beat_schedule, to_celery
from worker.transport import Channel
from worker.visibility import VisibilityRenewal

conf = app.conf


def test_json_only_never_pickle() -> None:
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]


def test_late_acks_and_redelivery_when_a_child_dies() -> None:
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1


def test_workers_fetch_with_the_transport_that_keeps_messages_in_redis() -> None:
    with app.connection_for_read() as connection:
        assert isinstance(connection.default_channel, Channel)


def test_a_short_visibility_timeout_renewed_and_swept_several_times_within_it() -> None:
    broker = conf.broker_transport_options
    assert broker["visibility_timeout"] == settings.broker_visibility_timeout == 30
    assert conf.result_backend_transport_options["visibility_timeout"] == 30
    assert settings.task_soft_time_limit < conf.task_time_limit
    assert conf.task_time_limit == settings.task_time_limit
    # The runtime enforces the soft limit on the loop (worker.recording), not Celery.
    assert conf.task_soft_time_limit is None
    # The sweep runs on every call, every few seconds, and its lock cannot stop it for long.
    assert broker["unacked_restore_throttle"] == 1
    assert broker["unacked_restore_interval"] * 6 <= broker["visibility_timeout"]
    assert broker["unacked_mutex_expire"] <= broker["unacked_restore_interval"] + 1
    assert VisibilityRenewal in app.steps["consumer"]


def test_results_are_not_kept_by_celery() -> None:
    assert conf.task_ignore_result is True


def test_running_tasks_stop_when_the_broker_connection_is_lost() -> None:
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True


def test_a_task_sent_by_name_alone_lands_on_its_contracts_queue() -> None:
    """What beat and any producer without a queue of its own rely on: the app routes by name."""
    with Redis.from_url(TEST_REDIS_URL) as redis:
        redis.flushdb()  # this xdist worker's index of the suite's own Redis
        for name in CONTRACTS:
            app.send_task(name, kwargs={})
        landed = {
            json.loads(raw)["headers"]["task"]: queue.value
            for queue in Queue
            for raw in redis.lrange(queue.value, 0, -1)
        }
        redis.flushdb()
    assert landed == {name: contract.queue.value for name, contract in CONTRACTS.items()}


def test_schedules_accept_crontab_or_seconds() -> None:
    assert parse_schedule("15 3 * * *") == Cron("15 3 * * *")
    assert parse_schedule("2") == Every(2)
    nightly = to_celery(Cron("15 3 * * *"))
    assert isinstance(nightly, crontab)
    assert nightly.hour == {3}  # type: ignore[attr-defined]  # set in __init__, not stubbed
    assert nightly.minute == {15}  # type: ignore[attr-defined]
    assert to_celery(Every(2)) == timedelta(seconds=2)
    for wrong in ("15 3 * *", "-1", "0"):
        with pytest.raises(ValueError, match=r"five fields|must be positive"):
            parse_schedule(wrong)


def test_overrides_by_entry_name_and_the_older_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "schedule_prune_logs", "30 1 * * *")
    assert beat_schedule([CONTRACTS[PRUNE_LOGS.name]])["prune-logs"]["schedule"] == to_celery(
        Cron("30 1 * * *")
    )
    # The one setting for every entry wins over the older per-entry variable.
    monkeypatch.setattr(settings, "beat_schedule_overrides", {"prune-logs": "2"})
    assert beat_schedule([CONTRACTS[PRUNE_LOGS.name]])["prune-logs"]["schedule"] == timedelta(
        seconds=2
    )
    monkeypatch.setattr(settings, "beat_schedule_overrides", {"prune-log": "2"})
    with pytest.raises(ValueError, match="names no beat entry: \\['prune-log'\\]"):
        beat_schedule(CONTRACTS.values())


def test_the_nightly_entries_run_at_their_utc_times() -> None:
    entries = conf.beat_schedule
    users = entries["deactivate-inactive-users"]
    prune = entries["prune-logs"]
    assert users["task"] == "users.deactivate_inactive_users"
    assert prune["task"] == "maintenance.prune_logs"
    assert prune["kwargs"] == {"days": 30}
    assert str(conf.timezone) == "UTC"
    assert conf.enable_utc is True
    for entry, hour, minute in ((users, 3, 15), (prune, 3, 45)):
        assert isinstance(entry["schedule"], crontab)
        assert entry["schedule"].hour == {hour}  # type: ignore[attr-defined]
        assert entry["schedule"].minute == {minute}  # type: ignore[attr-defined]
    relay = entries["outbox-relay"]
    assert relay["task"] == "outbox.relay"
    assert relay["schedule"].total_seconds() == settings.outbox_relay_interval


def test_a_killed_beat_is_replaced_within_30_seconds() -> None:
    assert conf.beat_scheduler == "worker.beat:HeartbeatScheduler"
    # The lock outlives a dead holder by at most its timeout; a standby tries it every loop.
    assert conf.redbeat_lock_timeout + conf.beat_max_loop_interval <= 20
    # The holder renews it every loop: several renewals fit in one timeout.
    assert conf.beat_max_loop_interval * 3 <= conf.redbeat_lock_timeout
