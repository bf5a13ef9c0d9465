"""The liveness and readiness probes: light, fast, and right about real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import TaskRun, TaskState
from tests.fixtures.processes import Proc, Processes, run_probe
from tests.fixtures.runs import publish
from tests.fixtures.users import insert_users
from tests.fixtures.waiting import wait_until
from tests.worker.probe_tasks import PROBE_APP, SLOW_UPDATE, reports
from worker.probe import BEAT_HEARTBEAT, WORKER_HEARTBEAT, WORKER_READY, check

HEAVY = ("celery", "sqlalchemy", "pydantic", "redis", "shared.settings", "worker.celery_app")


def test_the_probe_imports_nothing_heavy() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, worker.probe; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.split()
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY]


def test_a_fresh_heartbeat_passes_and_a_stale_or_missing_one_fails(tmp_path: Path) -> None:
    heartbeat = tmp_path / BEAT_HEARTBEAT
    assert check("beat", ready=False, max_age=5, directory=tmp_path) is not None
    heartbeat.touch()
    assert check("beat", ready=False, max_age=5, directory=tmp_path) is None
    an_hour_ago = time.time() - 3600
    os.utime(heartbeat, (an_hour_ago, an_hour_ago))
    assert "old" in str(check("beat", ready=False, max_age=5, directory=tmp_path))


def test_readiness_needs_the_ready_file_and_a_live_heartbeat(tmp_path: Path) -> None:
    (tmp_path / WORKER_READY).touch()
    assert check("worker", ready=True, max_age=5, directory=tmp_path) is not None
    (tmp_path / WORKER_HEARTBEAT).touch()
    assert check("worker", ready=True, max_age=5, directory=tmp_path) is None
    (tmp_path / WORKER_READY).unlink()
    assert check("worker", ready=False, max_age=5, directory=tmp_path) is None
    assert check("worker", ready=True, max_age=5, directory=tmp_path) is not None


def test_each_worker_name_has_its_own_files(tmp_path: Path) -> None:
    """Two workers in one HEARTBEAT_DIR (make run): each probe reads its own worker's files."""
    (tmp_path / "concurrent.heartbeat").touch()
    (tmp_path / "concurrent.ready").touch()
    assert check("worker", ready=True, max_age=5, directory=tmp_path, name="concurrent") is None
    problem = check("worker", ready=True, max_age=5, directory=tmp_path, name="prefork")
    assert "prefork.heartbeat" in str(problem)
    (tmp_path / "prefork.heartbeat").touch()
    problem = check("worker", ready=True, max_age=5, directory=tmp_path, name="prefork")
    assert "prefork.ready" in str(problem)
    assert run_probe("worker", tmp_path, 5, "--ready", "--name", "concurrent") == 0
    assert run_probe("worker", tmp_path, 5, "--ready", "--name", "prefork") == 1


def assert_probe_follows_a_stop(
    proc: Proc, component: str, heartbeat_dir: Path, max_age: float
) -> None:
    """SIGSTOP the process: its probe fails within max_age (plus polling slack); SIGCONT: it
    passes again."""
    proc.signal(signal.SIGSTOP)
    started = time.monotonic()
    try:
        wait_until(
            lambda: run_probe(component, heartbeat_dir, max_age) != 0,
            max_age + 5,
            "a failing probe",
        )
        failed_after = time.monotonic() - started
    finally:
        proc.signal(signal.SIGCONT)
    print(f"{component} probe failed {failed_after:.1f}s after SIGSTOP (bound {max_age}s)")
    assert failed_after <= max_age + 1.5
    wait_until(
        lambda: run_probe(component, heartbeat_dir, max_age) == 0, 5, "a passing probe again"
    )


def test_the_beat_probe_fails_within_its_bound_once_beat_stops_ticking(
    processes: Processes,
) -> None:
    max_age = 3.0
    beat = processes.beat("beat", BEAT_MAX_LOOP_INTERVAL="1")
    heartbeat_dir = processes.tmp_path / "beat"
    wait_until(lambda: run_probe("beat", heartbeat_dir, max_age) == 0, 10, "a passing probe")
    assert_probe_follows_a_stop(beat, "beat", heartbeat_dir, max_age)


async def test_the_worker_probes_follow_the_main_process_not_the_tasks(
    processes: Processes, e2e_redis: Redis, e2e_engine: AsyncEngine
) -> None:
    max_age = 2.0
    task_seconds = 4 * max_age
    heartbeat_dir = processes.tmp_path
    worker = processes.worker(app=PROBE_APP, concurrency=1, HEARTBEAT_INTERVAL="0.5")
    assert run_probe("worker", heartbeat_dir, max_age, "--ready") == 0
    assert run_probe("worker", heartbeat_dir, max_age) == 0

    # A task that outlasts the bound several times over, in the only pool child.
    [user_id] = await insert_users(e2e_engine, "p@example.com")
    [run_id] = await publish(e2e_redis, SLOW_UPDATE.name, user_id=user_id, seconds=task_seconds)
    await reports(e2e_redis, 1)
    probed_during_task = 0
    deadline = time.monotonic() + task_seconds + 30
    while time.monotonic() < deadline:
        async with e2e_engine.connect() as conn:
            state = await conn.scalar(select(TaskRun.state).where(TaskRun.id == run_id))
        if state == TaskState.SUCCEEDED:
            break
        assert run_probe("worker", heartbeat_dir, max_age) == 0, "unhealthy during a long task"
        probed_during_task += 1
    assert state == TaskState.SUCCEEDED
    assert probed_during_task >= 10

    assert_probe_follows_a_stop(worker, "worker", heartbeat_dir, max_age)

    worker.stop()
    assert not (heartbeat_dir / WORKER_READY).exists(), "still ready after shutdown"
    assert run_probe("worker", heartbeat_dir, max_age, "--ready") != 0
