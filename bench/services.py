"""What a benchmark runs against: databases of its own and a Redis of its own.

- PostgreSQL: the server of BENCH_DATABASE_URL (default: the local one), databases named
  `backend_bench*` only (tests.fixtures.postgres refuses any other name), so a wrong name can
  never drop real data. The settings' DATABASE_URL, the application's own database, is not read.
- Redis: a redis-server started for the run on a free port and stopped after it, so a benchmark
  neither takes nor leaves messages on a Redis that anything else uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from tests.fixtures.ports import free_port
from tests.fixtures.postgres import guard_scratch_database
from tests.fixtures.redis_server import RedisServer

PREFIX = "backend_bench"
SERVER = make_url(
    os.environ.get("BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
).set(drivername="postgresql+asyncpg")


def url_of(name: str) -> URL:
    if not name.startswith(PREFIX):
        raise ValueError(f"a benchmark's database is named {PREFIX}*, not {name!r}")
    return SERVER.set(database=guard_scratch_database(name))


@contextmanager
def own_redis(work: Path) -> Iterator[str]:
    """The URL of a redis-server of the benchmark's own, for as long as the block runs."""
    server = RedisServer(free_port(), log=work / "redis.log")
    try:
        yield f"{server.url}/0"
    finally:
        server.stop()
