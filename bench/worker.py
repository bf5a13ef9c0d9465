"""How fast does the worker drain recorded database tasks, next to bare Celery tasks?

Three setups, one after the other, each worker with production's flags: the prefork kind
(`-P prefork -c 2`), the concurrent kind (`-P threads -c 100`, worker.kinds.CONCURRENT: many
runs in flight on one event loop per process), and, for context, two concurrent workers side by
side (one process per core, as two pods of the kind on a two-core node would run). Each drains,
in alternating rounds (a b a b ...) so that machine noise falls on both kinds of task alike:

(a) `bench.noop`, a bare task: the ceiling set by Celery, Redis and this machine;
(b) `bench.touch_user`, shaped like `send_welcome_email` without SMTP: `run_recorded` claims the
    run, then reads, locks and updates one user row and records SUCCEEDED in one transaction,
    through `get_task_session()` on the child's loop and pooled engine.

Then, for context, a smaller batch of
(c) `bench.touch_user_asyncio_run`: the same core written the original standard's way,
    `asyncio.run()` around `get_task_session()`, which gives every task a connection of its
    own (the slow path the runtime exists to avoid); it records no run.

Messages are published in pipelined batches with shared.broker.Broker. Every task's last action
is one Redis INCR; a round's time runs from its first publish until the counter reaches the
round's size. Prints, per setup, the rates, the worker processes' CPU ms per task (all of their
processes, read with psutil around each round), the ratio b/a (target >= 0.8), and each worker
process's RSS after every 10,000 tasks (target: flat, under 150 MB); then (b) on the concurrent
worker beside (b) on the prefork one (target: not slower), and on the two concurrent workers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import URL

from bench.services import own_redis, url_of
from bench.tasks import COUNTER_KEY, NOOP, TOUCH_USER, TOUCH_USER_ASYNCIO_RUN
from shared.broker import Broker, TaskMessage
from tests.fixtures.postgres import create_migrated_database, drop_database, engine_on
from tests.fixtures.processes import Proc, Processes
from worker.kinds import CONCURRENT

DATABASE = "backend_bench_worker"
CONCURRENCY = 2
PUBLISH_CHUNK = 200  # the worker starts on the first chunk while the rest are encoded
POLL_SECONDS = 0.005
ROUND_TIMEOUT = 300.0
RSS_EVERY = 10_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    tasks: int  # of each of (a) and (b)
    round_size: int
    slow_tasks: int  # of (c)
    warmup: int  # of each kind, untimed: imports, pools and caches settle first
    synchronous_commit: str = "off"

    @property
    def users(self) -> int:
        return 2 * self.warmup + self.tasks + self.slow_tasks


@dataclass
class Kind:
    label: str
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # of the worker's processes, over the timed rounds
    done: int = 0

    @property
    def rate(self) -> float:
        return self.done / sum(self.seconds)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.done


QUEUE = "default"  # the production app's own queue, on the benchmark's own Redis


@dataclass(frozen=True)
class WorkerSetup:
    label: str
    pool: str
    concurrency: int
    workers: int = 1

    @property
    def flags(self) -> str:
        flags = f"-P {self.pool} -c {self.concurrency}"
        return flags if self.workers == 1 else f"{self.workers} x {flags}"


PREFORK = WorkerSetup("prefork worker", "prefork", CONCURRENCY)
CONCURRENT_WORKER = WorkerSetup("concurrent worker", CONCURRENT.pool, CONCURRENT.concurrency)
TWO_CONCURRENT_WORKERS = WorkerSetup(
    "two concurrent workers", CONCURRENT.pool, CONCURRENT.concurrency, workers=2
)
WORKERS = (PREFORK, CONCURRENT_WORKER, TWO_CONCURRENT_WORKERS)


def start_workers(processes: Processes, setup: WorkerSetup, synchronous_commit: str) -> list[Proc]:
    """The workers as tests start them (production's flags, tests/fixtures/processes.py)."""
    return [
        processes.worker(
            app="bench.tasks",
            pool=setup.pool,
            concurrency=setup.concurrency,
            # Production's default is off (see the README); on shows what WAL flushes cost.
            WORKER_SYNCHRONOUS_COMMIT="true" if synchronous_commit == "on" else "false",
            ENVIRONMENT="development",
            LOG_LEVEL="INFO",
        )
        for _ in range(setup.workers)
    ]


def worker_processes(workers: list[Proc]) -> list[psutil.Process]:
    """Every process of the workers: each main process and its prefork children."""
    mains = [psutil.Process(worker.popen.pid) for worker in workers]
    return [process for main in mains for process in (main, *main.children())]


def pool_processes(worker: Proc) -> list[psutil.Process]:
    """The processes that run tasks: a prefork worker's children, a threads-pool worker itself."""
    main = psutil.Process(worker.popen.pid)
    return main.children() or [main]


def children_rss_mb(workers: list[Proc]) -> dict[int, float]:
    return {
        member.pid: member.memory_info().rss / MB
        for worker in workers
        for member in pool_processes(worker)
    }


def cpu_seconds(members: list[psutil.Process]) -> float:
    return sum(times.user + times.system for times in (m.cpu_times() for m in members))


class Producer:
    def __init__(self, redis: Redis, workers: list[Proc]) -> None:
        self.redis = redis
        self.broker = Broker(redis, timeout=10)
        self.workers = workers
        self.members = worker_processes(workers)
        self.user_ids: Iterator[int] = itertools.count(1)

    def messages(self, name: str, count: int) -> list[TaskMessage]:
        if name == NOOP:
            return [TaskMessage(uuid.uuid4(), name, {}, QUEUE) for _ in range(count)]
        return [
            TaskMessage(uuid.uuid4(), name, {"user_id": next(self.user_ids)}, QUEUE)
            for _ in range(count)
        ]

    async def drain(self, name: str, count: int) -> float:
        """Seconds from the first publish until `count` tasks have counted themselves done."""
        messages = self.messages(name, count)
        await self.redis.delete(COUNTER_KEY)
        start = time.perf_counter()
        for i in range(0, count, PUBLISH_CHUNK):
            await self.broker.publish(messages[i : i + PUBLISH_CHUNK])
        while int(await self.redis.get(COUNTER_KEY) or 0) < count:
            if time.perf_counter() - start > ROUND_TIMEOUT:
                raise TimeoutError(f"{name}: {count} tasks not done in {ROUND_TIMEOUT}s")
            for worker in self.workers:
                worker.check_alive()
            await asyncio.sleep(POLL_SECONDS)
        return time.perf_counter() - start

    async def run(self, kind: Kind, count: int) -> None:
        start = cpu_seconds(self.members)
        kind.seconds.append(await self.drain(kind.name, count))
        kind.cpu_seconds += cpu_seconds(self.members) - start
        kind.done += count


async def seed_users(database: URL, count: int) -> None:
    async with engine_on(database, "bench") as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO users (email, full_name) SELECT 'bench' || i || '@example.com', "
                    "'Bench User ' || i FROM generate_series(1, :n) AS i"
                ),
                {"n": count},
            )
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE users"))


async def reset_users(database: URL) -> None:
    """The next worker starts from the same rows: no user stamped, no run recorded."""
    async with engine_on(database, "bench") as engine, engine.begin() as conn:
        await conn.execute(text("UPDATE users SET welcome_email_sent_at = NULL"))
        await conn.execute(text("DELETE FROM task_runs"))


async def check_effects(database: URL) -> str:
    """The runs really happened: (b) rows SUCCEEDED, and the users (b) and (c) stamped."""
    async with engine_on(database, "bench") as engine, engine.connect() as conn:
        runs = (
            await conn.execute(
                text(
                    "SELECT name, count(*) FROM task_runs WHERE state = 'SUCCEEDED' "
                    "GROUP BY name ORDER BY name"
                )
            )
        ).all()
        stamped = await conn.scalar(
            text("SELECT count(*) FROM users WHERE welcome_email_sent_at IS NOT NULL")
        )
    succeeded = ", ".join(f"{count:,} {name}" for name, count in runs)
    return f"SUCCEEDED runs: {succeeded}; users stamped: {stamped:,}"


def format_rss(label: str, rss: dict[int, float]) -> str:
    children = "  ".join(f"pid {pid}: {mb:6.1f}" for pid, mb in sorted(rss.items()))
    return f"  {label:<28}{children}"


async def measure(
    plan: Plan, setup: WorkerSetup, workers: list[Proc], database: URL, redis_url: str
) -> tuple[list[str], float]:
    """The report of one setup, and its (b) rate."""
    redis: Redis = Redis.from_url(redis_url)
    producer = Producer(redis, workers)
    bare = Kind("(a) bare Celery task", NOOP)
    recorded = Kind("(b) recorded DB task, pooled", TOUCH_USER.name)
    slow = Kind("(c) same, asyncio.run+NullPool", TOUCH_USER_ASYNCIO_RUN.name)
    try:
        await redis.delete(QUEUE, COUNTER_KEY)
        for name in (NOOP, TOUCH_USER.name):  # also waits out the worker's start-up
            await producer.drain(name, plan.warmup)
        rss = [(f"after warm-up ({2 * plan.warmup:,})", children_rss_mb(workers))]
        rounds, rest = divmod(plan.tasks, plan.round_size)
        sizes = [plan.round_size] * rounds + ([rest] if rest else [])
        for number, size in enumerate(sizes, 1):
            for kind in (bare, recorded):
                await producer.run(kind, size)
            done = bare.done + recorded.done
            if done // RSS_EVERY > (done - 2 * size) // RSS_EVERY or number == len(sizes):
                rss.append((f"after {done:,} tasks", children_rss_mb(workers)))
        await producer.run(slow, plan.slow_tasks)
    finally:
        await redis.aclose()
    lines = report(plan, setup, bare, recorded, slow, rss)
    return [*lines, await check_effects(database)], recorded.rate


def report(
    plan: Plan,
    setup: WorkerSetup,
    bare: Kind,
    recorded: Kind,
    slow: Kind,
    rss: list[tuple[str, dict[int, float]]],
) -> list[str]:
    ratio = recorded.rate / bare.rate
    per_round = [b / r for b, r in zip(bare.seconds, recorded.seconds, strict=True)]
    peak = max(mb for _, snapshot in rss for mb in snapshot.values())
    growth = max(
        rss[-1][1].get(pid, mb) - mb for pid, mb in rss[0][1].items()
    )  # per child, warm-up to the end
    lines = [
        f"{setup.label} ({setup.flags}); "
        f"{plan.tasks:,} tasks of (a) and of (b) in rounds of "
        f"{plan.round_size:,}, alternating; {plan.slow_tasks:,} of (c); "
        f"worker synchronous_commit = {plan.synchronous_commit}.",
        "Every task ends with one Redis INCR; a round is timed from its first publish until "
        f"the counter reaches the round's size (polled every {POLL_SECONDS * 1000:.0f} ms).",
        "",
    ]
    for kind in (bare, recorded, slow):
        lines.append(
            f"{kind.label:<34}{kind.done:>7,} tasks {sum(kind.seconds):7.2f} s "
            f"{kind.rate:7.1f} tasks/s {kind.cpu_ms:6.2f} CPU ms/task"
        )
    lines += [
        "",
        f"ratio b/a: {ratio:.2f} (per round pair: min {min(per_round):.2f}, median "
        f"{statistics.median(per_round):.2f}, max {max(per_round):.2f}); target >= 0.8: "
        f"{'met' if ratio >= 0.8 else 'MISSED'}",
        f"pooled runtime vs asyncio.run + NullPool: b/c = {recorded.rate / slow.rate:.1f}x",
        f"at (b)'s CPU per task, one process (one core at most: the GIL) could not pass "
        f"{1000 / recorded.cpu_ms:.0f} tasks/s",
        "",
        "worker processes' RSS (MB):",
        *(format_rss(label, snapshot) for label, snapshot in rss),
        f"peak {peak:.1f} MB, growth per process from warm-up to end at most {growth:+.1f} MB; "
        f"target < 150 MB and flat: {'met' if peak < 150 and growth < 5 else 'MISSED'}",
    ]
    return lines


def parse_plan(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000, help="of each of (a) and (b)")
    parser.add_argument("--round", type=int, default=1_000, help="tasks per round")
    parser.add_argument("--slow-tasks", type=int, default=500, help="of (c)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 10 s")
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="off",
        help="the worker's WORKER_SYNCHRONOUS_COMMIT (production's default: off)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.round, args.slow_tasks = 1_000, 250, 100
    warmup = 100 if args.quick else 200
    return Plan(args.tasks, args.round, args.slow_tasks, warmup, args.synchronous_commit)


def main(argv: list[str] | None = None) -> None:
    plan = parse_plan(argv)
    database = create_migrated_database(url_of(DATABASE), "bench")
    try:
        asyncio.run(seed_users(database, plan.users))
        lines: list[str] = []
        rates: list[float] = []
        for setup in WORKERS:
            with (
                tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp,
                own_redis(Path(tmp)) as redis_url,
            ):
                processes = Processes(Path(tmp), database, redis_url)
                try:
                    workers = start_workers(processes, setup, plan.synchronous_commit)
                    found, rate = asyncio.run(measure(plan, setup, workers, database, redis_url))
                finally:
                    processes.stop_all()
            lines += [*found, ""]
            rates.append(rate)
            asyncio.run(reset_users(database))
        prefork, concurrent, two_concurrent = rates
        lines += [
            f"(b) on the concurrent worker: {concurrent:.1f} tasks/s, on the prefork worker: "
            f"{prefork:.1f} tasks/s ({concurrent / prefork:.2f}x); target: not slower: "
            f"{'met' if concurrent >= prefork else 'MISSED'}",
            f"(b) on two concurrent workers: {two_concurrent:.1f} tasks/s "
            f"({two_concurrent / prefork:.2f}x the prefork worker)",
        ]
    finally:
        asyncio.run(drop_database(database, "bench"))  # no run leaves its database behind
    print("\n".join(lines))


if __name__ == "__main__":
    main()
