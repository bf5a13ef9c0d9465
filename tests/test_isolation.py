"""Two checkouts run their suites side by side on one machine, and neither touches the
machine's Redis or leaves a database behind.

Each "checkout" is a copy of tests/ with one probe test added; both runs start at once and
their probes wait for each other, so they really overlap. A redis-server of this test stands
for the machine's Redis: a key in each of its 16 databases must survive both runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text

from shared.db import make_engine
from tests.environment import REPO, TEST_DATABASE_URL
from tests.fixtures.ports import free_port
from tests.fixtures.redis_server import RedisServer

PROBE = """
import json, os, time
from pathlib import Path
from redis import Redis
from tests.environment import DATABASE_PREFIX, REDIS_PORT, TEST_REDIS_URL

async def test_probe(redis, test_database):
    await redis.set("probe", "mine")  # the suite's own server: fixtures flush it freely
    meeting = Path(os.environ["ISOLATION_MEETING"])
    (meeting / DATABASE_PREFIX).write_text(json.dumps({"redis_port": REDIS_PORT}))
    deadline = time.monotonic() + 60
    while len(list(meeting.iterdir())) < 2:  # both runs are live at once
        assert time.monotonic() < deadline, "the other checkout's run never started"
        time.sleep(0.05)
"""


def copy_of_checkout(where: Path) -> Path:
    where.mkdir()
    shutil.copy(REPO / "pyproject.toml", where)
    shutil.copytree(
        REPO / "tests", where / "tests", ignore=shutil.ignore_patterns("__pycache__", "test_*.py")
    )
    (where / "tests" / "test_probe.py").write_text(PROBE)
    return where


async def databases_named(prefix: str) -> list[str]:
    engine = make_engine("test", url=TEST_DATABASE_URL.set(database="postgres"))
    try:
        async with engine.connect() as conn:
            names = await conn.scalars(
                text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"),
                {"p": prefix},
            )
            return list(names)
    finally:
        await engine.dispose()


def test_two_checkouts_test_side_by_side_and_leave_the_machine_as_it_was(tmp_path: Path) -> None:
    machine_redis = RedisServer(free_port(), log=tmp_path / "machine-redis.log")
    try:
        for index in range(16):
            with Redis.from_url(f"{machine_redis.url}/{index}") as client:
                client.set("precious", index)
        meeting = tmp_path / "meeting"
        meeting.mkdir()
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"TESTS_OWN_REDIS_PORT", "TESTS_OWN_REDIS_PID", "TEST_NAMESPACE"}
            and not key.startswith(("PYTEST_", "COV_"))
        }
        env.update(
            REDIS_URL=f"{machine_redis.url}/0",
            DATABASE_URL=TEST_DATABASE_URL.set(database="backend").render_as_string(False),
            ISOLATION_MEETING=str(meeting),
        )
        runs = []
        for name in ("one", "two"):
            checkout = copy_of_checkout(tmp_path / name)
            basetemp = tmp_path / f"{name}-basetemp"
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--basetemp={basetemp}", "tests/test_probe.py"]  # fmt: skip
            runs.append(
                subprocess.Popen(
                    argv, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
            )
        outputs = [run.communicate(timeout=180)[0].decode(errors="replace") for run in runs]
        assert all(run.returncode == 0 for run in runs), "\n".join(outputs)

        seen = {p.name: json.loads(p.read_text()) for p in meeting.iterdir()}
        prefixes = sorted(seen)
        assert len(prefixes) == 2, seen  # a namespace per checkout
        ports = {figures["redis_port"] for figures in seen.values()}
        assert len(ports) == 2, seen  # a Redis server per run
        assert machine_redis.port not in ports
        for port in ports:
            with (
                Redis(port=port, socket_connect_timeout=1) as gone,
                pytest.raises(RedisConnectionError),
            ):
                gone.ping()  # the run stopped its redis-server
        for index in range(16):
            with Redis.from_url(f"{machine_redis.url}/{index}") as client:
                assert client.get("precious") == str(index).encode()
        for prefix in prefixes:
            assert asyncio.run(databases_named(prefix)) == []
    finally:
        machine_redis.stop()
