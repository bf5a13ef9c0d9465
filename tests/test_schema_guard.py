"""The API and the worker refuse to start on a database whose schema is not at the head."""

import asyncio
import sys

import pytest
from sqlalchemy.engine import URL

from tests.environment import TEST_DATABASE_URL
from tests.fixtures.postgres import recreate_database
from tests.fixtures.processes import Processes
from tests.fixtures.waiting import wait_until


@pytest.fixture
def unmigrated_database() -> URL:
    url = TEST_DATABASE_URL.set(database=f"{TEST_DATABASE_URL.database}_unmigrated")
    asyncio.run(recreate_database(url))
    return url


@pytest.mark.parametrize("component", ["api", "worker"])
def test_refuses_to_start_before_migrations(
    processes: Processes, unmigrated_database: URL, component: str
) -> None:
    database = unmigrated_database.render_as_string(hide_password=False)
    if component == "api":
        proc = processes.start(
            "api",
            [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", "0"],
            DATABASE_URL=database,
        )
    else:
        proc = processes.start(
            "worker",
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-c", "1"],
            DATABASE_URL=database,
        )
    wait_until(lambda: proc.popen.poll() is not None, 30, f"the {component} to give up")
    assert proc.popen.returncode != 0
    assert "run `alembic upgrade head` first" in proc.output()
