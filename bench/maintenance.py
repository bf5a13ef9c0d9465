"""How do the batched maintenance cores compare with the one SQL statement doing the same work?

For each job, a seed database is created at the migrations' head, filled with set-based SQL
(generate_series) and vacuumed and analyzed once. Each side of a comparison then gets a fresh
file copy of it (CREATE DATABASE ... TEMPLATE), so both start from identical, vacuumed data:

- deactivate_inactive_users over N users, a third of them idle for more than 90 days, spread
  evenly through the id range; beside one `UPDATE users SET is_active = false ...`.
- prune_logs(days=30) over M task runs in the order they were written, the older half finished
  31-90 days ago, the newer half within the last 29 days (a gap either side of the cutoff, so
  the minutes between the two sides do not change which rows qualify); beside one
  `DELETE FROM task_runs WHERE ...`.

The task side runs the core under `asyncio.run` in its own process (bench.maintenance_task),
which reports its seconds and peak RSS; the SQL side is timed from connecting to its commit.
Prints seconds, the ratio task/SQL (target <= 1.5) and the task's peak RSS (target < 150 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL

from bench.services import url_of
from tests.fixtures.postgres import (
    create_migrated_database,
    drop_database,
    engine_on,
    recreate_database,
)

COPY = "backend_bench_copy"
REPO = Path(__file__).resolve().parents[1]

SEED_USERS = """
INSERT INTO users (email, full_name, created_at, last_seen_at)
SELECT 'user' || i || '@example.com', 'User ' || i,
       now() - interval '400 days' + (i % 97) * interval '1 day',
       CASE WHEN i % 6 = 0 THEN NULL
            WHEN i % 3 = 0 THEN now() - interval '91 days' - (i % 200) * interval '1 day'
            ELSE now() - (i % 80) * interval '1 day' END
FROM generate_series(1, :n) AS i
"""

SEED_TASK_RUNS = """
INSERT INTO task_runs (id, name, kwargs, state, result, attempts,
                       created_at, published_at, started_at, finished_at)
SELECT gen_random_uuid(), 'users.send_welcome_email', jsonb_build_object('user_id', i),
       state, CASE WHEN state = 'SUCCEEDED' THEN 'true'::jsonb END, 1,
       at - interval '2 seconds', at - interval '2 seconds', at - interval '1 second',
       CASE WHEN state = 'STARTED' THEN NULL ELSE at END
FROM (
    SELECT i,
           CASE WHEN i <= :n / 2
                THEN now() - interval '90 days' + (i::float / (:n / 2)) * interval '59 days'
                ELSE now() - interval '29 days'
                     + ((i - :n / 2)::float / (:n / 2)) * interval '29 days' END AS at,
           CASE WHEN i > :n / 2 AND i % 100 = 0 THEN 'STARTED'
                WHEN i % 20 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END AS state
    FROM generate_series(1, :n) AS i
) AS runs
"""


@dataclass(frozen=True)
class Job:
    name: str  # also bench.maintenance_task's argument
    task: str
    seed_database: str
    table: str
    seed: str
    plain_sql: str


JOBS = (
    Job(
        "deactivate",
        "deactivate_inactive_users",
        "backend_bench_users_seed",
        "users",
        SEED_USERS,
        "UPDATE users SET is_active = false, deactivated_at = now() WHERE is_active "
        "AND coalesce(last_seen_at, created_at) < now() - interval '90 days'",
    ),
    Job(
        "prune",
        "prune_logs(days=30)",
        "backend_bench_runs_seed",
        "task_runs",
        SEED_TASK_RUNS,
        "DELETE FROM task_runs WHERE state IN ('SUCCEEDED', 'FAILED') "
        "AND finished_at < now() - interval '30 days'",
    ),
)


@dataclass(frozen=True)
class Side:
    seconds: float
    rows: int
    peak_rss_mb: float | None = None


async def autocommit(url: URL, statement: str) -> None:
    async with engine_on(url, "bench") as engine, engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(statement))


async def fill(url: URL, job: Job, rows: int) -> float:
    start = time.perf_counter()
    async with engine_on(url, "bench") as engine, engine.begin() as conn:
        await conn.execute(text(job.seed), {"n": rows})
    await autocommit(url, f"VACUUM ANALYZE {job.table}")
    return time.perf_counter() - start


async def plain_sql(url: URL, statement: str) -> Side:
    async with engine_on(url, "bench") as engine:
        start = time.perf_counter()
        async with engine.begin() as conn:
            rows = (await conn.execute(text(statement))).rowcount
        return Side(time.perf_counter() - start, rows)


def task(url: URL, job: Job) -> Side:
    env = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.maintenance_task", job.name],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Side(report["seconds"], report["rows"], report["peak_rss_mb"])


async def on_fresh_copy(job: Job, run_task: bool) -> Side:
    copy = url_of(COPY)
    await recreate_database(copy, "bench", template=job.seed_database)
    try:
        if run_task:
            return await asyncio.to_thread(task, copy, job)
        return await plain_sql(copy, job.plain_sql)
    finally:
        await drop_database(copy, "bench")


async def compare(job: Job, repeat: int) -> list[str]:
    lines: list[str] = []
    ratios: list[float] = []
    peaks: list[float] = []
    for number in range(1, repeat + 1):
        # Alternate which side runs first, so neither always meets the warmer cache.
        order = (False, True) if number % 2 else (True, False)
        sides = {run_task: await on_fresh_copy(job, run_task) for run_task in order}
        sql, core = sides[False], sides[True]
        if sql.rows != core.rows:
            raise RuntimeError(f"{job.name}: the SQL changed {sql.rows} rows, the task {core.rows}")
        ratios.append(core.seconds / sql.seconds)
        peaks.append(core.peak_rss_mb or 0.0)
        lines.append(
            f"  run {number}: one statement {sql.seconds:6.2f} s | task {core.seconds:6.2f} s "
            f"| ratio {ratios[-1]:.2f} | {core.rows:,} rows | task peak RSS {peaks[-1]:.1f} MB"
        )
    ratio, peak = statistics.median(ratios), max(peaks)
    lines.append(
        f"  median ratio {ratio:.2f}: target <= 1.5 {'met' if ratio <= 1.5 else 'MISSED'}; "
        f"peak RSS {peak:.1f} MB: target < 150 MB {'met' if peak < 150 else 'MISSED'}"
    )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.maintenance", description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5_000_000, help="task-run rows")
    parser.add_argument("--repeat", type=int, default=2, help="comparisons per job")
    parser.add_argument("--quick", action="store_true", help="100k users, 500k runs, once")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.runs, args.repeat = 100_000, 500_000, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for job, rows in zip(JOBS, (args.users, args.runs), strict=True):
        url = create_migrated_database(url_of(job.seed_database), "bench")
        seconds = asyncio.run(fill(url, job, rows))
        print(f"{job.task} over {rows:,} {job.table} (seeded in {seconds:.0f} s):", flush=True)
        try:
            print("\n".join(asyncio.run(compare(job, args.repeat))), flush=True)
        finally:
            asyncio.run(drop_database(url, "bench"))


if __name__ == "__main__":
    main()
