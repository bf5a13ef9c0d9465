"""Soak: the whole stack under a steady sign-up rate while its parts are knocked over.

    python -m bench.soak --minutes N --rate R

Starts, on loopback and of its own: a PostgreSQL database (created and migrated on the local
server), a redis-server on a free port, an aiosmtpd sink, uvicorn, a prefork worker and beat.
For N minutes it sends R `POST /users` per second; every minute the worker's whole process
group is SIGKILLed and a new worker started; Redis is restarted (without persistence) once,
half-way. Beat (which exits when Redis fails under it) and a worker that exits by itself are
started again, as their restart policy would. Then it drains (bounded) and checks: every user
created got its welcome email, no address got two (beyond the messages in flight at the kills,
the documented at-least-once window), and no run is left QUEUED, STARTED or RETRYING. Prints
the figures, worker RSS included; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from aiosmtpd.controller import Controller
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.services import url_of
from shared.db import make_engine
from shared.models import TaskRun, TaskState, User
from tests.fixtures.api import CLIENT
from tests.fixtures.ports import free_port
from tests.fixtures.postgres import create_migrated_database, drop_database
from tests.fixtures.processes import Proc, Processes
from tests.fixtures.smtp import Mailbox

DATABASE = url_of("backend_bench_soak")
# Short enough that a killed worker's messages come back within the drain: the visibility
# timeout (redelivery) and the hard limit (the relay's repair of a dead STARTED run) bound it.
STACK_ENV = {
    "TASK_SOFT_TIME_LIMIT": "10",
    "TASK_TIME_LIMIT": "15",
    "BROKER_VISIBILITY_TIMEOUT": "20",
    "OUTBOX_RELAY_INTERVAL": "1",
    "OUTBOX_GRACE_SECONDS": "2",
    "OUTBOX_REPAIR_AFTER": "10",
}
KILL_EVERY = 60.0
DRAIN_SECONDS = 180.0
ANSWER_WITHIN = 2.0
UNFINISHED = (TaskState.QUEUED, TaskState.STARTED, TaskState.RETRYING)


def rss_mb(proc: Proc) -> float:
    """Resident memory of a worker: its main process and every pool child."""
    try:
        main = psutil.Process(proc.popen.pid)
        members = [main, *main.children(recursive=True)]
        return sum(p.memory_info().rss for p in members) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class Figures:
    answered: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    worker_rss: list[float] = field(default_factory=list)
    in_flight_at_kills: list[int] = field(default_factory=list)
    beat_restarts: int = 0
    worker_crashes: int = 0
    created: set[str] = field(default_factory=set)


class Soak:
    def __init__(self, minutes: float, rate: float, work: Path) -> None:
        self.seconds = minutes * 60
        self.rate = rate
        # REDIS_URL is set in start(), by own_redis(): the soak restarts that Redis.
        self.procs = Processes(work, DATABASE, redis_url="")
        self.mailbox = Mailbox(port=free_port())
        self.figures = Figures()
        self.redis_port = 0
        self.worker: Proc | None = None
        self.beat: Proc | None = None

    def start(self) -> str:
        create_migrated_database(DATABASE, "bench")
        self.redis_port = self.procs.own_redis()
        self.procs.env.update(
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.mailbox.port),
            **STACK_ENV,
        )
        _, base = self.procs.api()
        self.worker = self.procs.worker(concurrency=2)
        self.beat = self.procs.beat()
        return base

    async def sign_ups(self, http: httpx.AsyncClient) -> None:
        pending: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < self.seconds:
            due = int(elapsed * self.rate) + 1
            while sent < due:
                task = asyncio.create_task(self.sign_up(http, sent))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(min(0.05, 1 / self.rate))
        if pending:
            await asyncio.wait(pending)

    async def sign_up(self, http: httpx.AsyncClient, i: int) -> None:
        started = time.monotonic()
        try:
            response = await http.post(
                "/users", json={"email": f"soak{i}@example.com", "full_name": f"Soak {i}"}
            )
        except httpx.HTTPError as exc:
            self.figures.failures.append(f"{type(exc).__name__}: {exc}")
            return
        self.figures.latencies.append(time.monotonic() - started)
        self.figures.answered[response.status_code] += 1
        if response.status_code == 201:
            self.figures.created.add(f"soak{i}@example.com")

    async def faults(self) -> None:
        """A worker SIGKILLed every minute; Redis restarted once, half-way."""
        started = time.monotonic()
        redis_restarted = False
        kills = 0
        while True:
            elapsed = time.monotonic() - started
            if not redis_restarted and elapsed >= self.seconds / 2:
                redis_restarted = True
                await asyncio.to_thread(self.restart_redis)
            if elapsed >= (kills + 1) * KILL_EVERY and elapsed < self.seconds:
                kills += 1
                await self.kill_worker()
            if elapsed >= self.seconds:
                return
            await asyncio.to_thread(self.revive)
            await asyncio.sleep(0.5)

    async def kill_worker(self) -> None:
        assert self.worker is not None
        self.figures.worker_rss.append(rss_mb(self.worker))
        redis = Redis.from_url(self.procs.env["REDIS_URL"])
        try:
            # Aim for a moment when it holds messages (tasks take milliseconds, so an idle
            # worker is the likely target otherwise); give up aiming after two seconds.
            aim_until = time.monotonic() + 2
            while time.monotonic() < aim_until:
                if await redis.hlen("unacked"):
                    break
                await asyncio.sleep(0.001)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.worker.popen.pid, signal.SIGKILL)
            self.worker.popen.wait()
            self.figures.in_flight_at_kills.append(int(await redis.hlen("unacked")))
        finally:
            await redis.aclose()
        self.worker = await asyncio.to_thread(self.procs.worker, concurrency=2)

    def restart_redis(self) -> None:
        redis = next(p for p in self.procs.started if p.name == "redis" and p.popen.poll() is None)
        redis.stop()
        self.procs.restart_redis(self.redis_port)

    def revive(self) -> None:
        """What a restart policy does: start again a worker or beat that exited by itself."""
        beat = self.beat
        if beat is not None and (
            beat.popen.poll() is not None or "beat raised exception" in beat.output()
        ):
            # Exited, or logged its fatal error and is stuck on its way out (its liveness
            # probe, a stale heartbeat, would have it killed).
            with contextlib.suppress(ProcessLookupError):
                beat.signal(signal.SIGKILL)
            beat.popen.wait()
            self.figures.beat_restarts += 1
            self.beat = self.procs.beat()
        if self.worker is not None and self.worker.popen.poll() is not None:
            self.figures.worker_crashes += 1
            self.worker = self.procs.worker(concurrency=2)

    async def drain(self, engine: AsyncEngine, users: int) -> float:
        started = time.monotonic()
        while time.monotonic() - started < DRAIN_SECONDS:
            await asyncio.to_thread(self.revive)
            if len(set(addresses(self.mailbox))) >= users and await stuck(engine) == 0:
                break
            await asyncio.sleep(0.5)
        return time.monotonic() - started


async def stuck(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(TaskRun).where(TaskRun.state.in_(UNFINISHED))
        )
    return int(count or 0)


async def count_users(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(User)) or 0)


def addresses(mailbox: Mailbox) -> list[str]:
    return [str(m["To"]) for m in list(mailbox.messages)]


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def run(minutes: float, rate: float) -> int:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(minutes, rate, work)
    controller = Controller(soak.mailbox, hostname="127.0.0.1", port=soak.mailbox.port)
    controller.start()
    engine = make_engine("bench", pool_size=2, url=DATABASE)
    try:
        base = await asyncio.to_thread(soak.start)  # blocking: migrations, waits for ready
        assert soak.worker is not None
        await asyncio.sleep(5)  # a warmed-up worker, not one still importing
        soak.figures.worker_rss.append(rss_mb(soak.worker))
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=base, headers=CLIENT, timeout=10) as http:
            await asyncio.gather(soak.sign_ups(http), soak.faults())
        loaded_for = time.monotonic() - started
        users = await count_users(engine)
        drained_in = await soak.drain(engine, users)
        soak.figures.worker_rss.append(rss_mb(soak.worker))
        left = await stuck(engine)
    finally:
        soak.procs.stop_all()
        controller.stop()
        await engine.dispose()
        await drop_database(DATABASE, "bench")
    status = report(soak, users, loaded_for, drained_in, left, work)
    if status == 0:  # the processes' logs are kept only when a check failed
        shutil.rmtree(work, ignore_errors=True)
    return status


def report(
    soak: Soak, users: int, loaded_for: float, drained_in: float, left: int, work: Path
) -> int:
    f = soak.figures
    per_address = Counter(addresses(soak.mailbox))
    twice = sum(n - 1 for n in per_address.values() if n > 1)
    created = f.answered[201]
    lat = sorted(f.latencies)
    allowed_twice = sum(f.in_flight_at_kills)
    checks = {
        "every request answered 201": created == sum(f.answered.values()) and not f.failures,
        "every answer within 2 s": bool(lat) and lat[-1] < ANSWER_WITHIN,
        "users created == 201s": users == created,
        "one email per user": set(per_address) == f.created,
        "duplicates within the kills' in-flight bound": twice <= allowed_twice,
        "no run QUEUED/STARTED/RETRYING after the drain": left == 0,
    }
    print(f"soak: {loaded_for / 60:.1f} min at {soak.rate:g} sign-ups/s (logs: {work})")
    print(f"  requests sent               {sum(f.answered.values()) + len(f.failures)}")
    print(f"  answers                     {dict(sorted(f.answered.items()))}")
    print(f"  transport failures          {len(f.failures)} {f.failures[:3]}")
    print(
        f"  latency p50/p99/max         {percentile(lat, 50) * 1000:.0f} / "
        f"{percentile(lat, 99) * 1000:.0f} / {(lat[-1] if lat else 0) * 1000:.0f} ms"
    )
    print(f"  users created               {users}")
    print(f"  welcome emails received     {sum(per_address.values())}")
    print(f"  addresses emailed           {len(per_address)}")
    print(f"  addresses emailed twice     {twice} (in flight at the kills: {f.in_flight_at_kills})")
    print(f"  worker kills                {len(f.in_flight_at_kills)}; Redis restarts 1")
    print(f"  beat restarts               {f.beat_restarts} (beat exited by itself)")
    print(f"  worker restarts             {f.worker_crashes} (a worker exited by itself)")
    print(f"  drain after the load        {drained_in:.1f} s")
    print(f"  runs QUEUED/STARTED/RETRYING {left}")
    rss = ", ".join(f"{r:.0f}" for r in f.worker_rss)
    print(
        f"  worker RSS (MB, main+children) start {f.worker_rss[0]:.0f}, end {f.worker_rss[-1]:.0f}"
    )
    print(f"    at start, before each kill, at end: {rss}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    return 0 if all(checks.values()) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--rate", type=float, default=10, help="sign-ups per second")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.minutes, args.rate)))


if __name__ == "__main__":
    main()
