"""I/O-bound benchmark: a burst of sign-ups' welcome emails against a slow mail server.

    python -m bench.io [--sign-ups 2000] [--delay 0.1] [--no-reference]

Starts, of its own: a database (`backend_bench_io`, created and migrated), a redis-server, a
mail server taking `--delay` seconds per message (bench/smtp_sink.py) and uvicorn. Then:

1. Ours. N `POST /users` through the API (the burst: users and their runs committed, messages
   on the queue), then the worker exactly as `make run` starts it for the default queue
   (worker.kinds.CONCURRENT: `-P threads -c 100`), which drains them.
2. The reference, on the same database server, Redis and mail server: the same work (lock the
   user, send, stamp, commit) on arq with `max_jobs=100` and an asyncpg pool of 20, N jobs
   enqueued before its worker starts (bench/arq_reference.py, in an environment of its own
   under .bench-env/arq, created with uv on first use).

The figure is the steady drain rate: messages per second between the 10th and the 90th
percentile of arrivals at the mail server, so neither start-up nor the tail counts. Printed
beside it: CPU milliseconds per email of each process (worker, mail server, PostgreSQL backends
of the worker, API during the sign-ups), the peak PostgreSQL connections the worker held,
messages per SMTP session, how busy the worker was (its CPU seconds per wall second: near 1, a
process bound by one core) and its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from sqlalchemy import insert, text
from sqlalchemy.engine import URL

from bench.services import url_of
from shared.db import make_engine
from shared.models import User
from tests.fixtures.api import CLIENT
from tests.fixtures.ports import free_port
from tests.fixtures.postgres import create_migrated_database, drop_database
from tests.fixtures.processes import Proc, Processes
from worker.kinds import CONCURRENT

DATABASE = url_of("backend_bench_io")
REPO = Path(__file__).resolve().parents[1]
ARQ_ENV = REPO / ".bench-env" / "arq"
ARQ_PYTHON = ARQ_ENV / "bin" / "python"
SIGN_UP_CONCURRENCY = 50
SAMPLE_EVERY = 0.2


@dataclass
class Phase:
    """What one side of the comparison measured."""

    name: str
    prefix: str  # the recipients' addresses start with it
    count: int
    arrivals: list[float] = field(default_factory=list)
    sessions: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, by process
    peak_connections: int = 0
    peak_rss_mb: float = 0.0
    worker_seconds: float = 0.0  # wall time over which the worker's CPU was measured

    @property
    def steady_rate(self) -> float:
        times = sorted(self.arrivals)
        low, high = times[len(times) // 10], times[len(times) * 9 // 10]
        return (len(times) * 9 // 10 - len(times) // 10) / (high - low)

    def per_email_ms(self, process: str) -> float:
        return self.cpu.get(process, 0.0) * 1000 / self.count

    @property
    def worker_cores(self) -> float:
        """How busy the worker was: near 1.0, a process bound by one core (the GIL), whose
        rate then follows its CPU per email and the machine's speed of the moment."""
        return self.cpu.get("worker", 0.0) / max(self.worker_seconds, 1e-9)


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    try:
        process = psutil.Process(pid)
        members = [process, *(process.children(recursive=True) if with_children else [])]
        return sum(p.cpu_times().user + p.cpu_times().system for p in members)
    except psutil.NoSuchProcess:
        return 0.0


def rss_mb(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


class Sink:
    """The mail server's log: sessions and arrivals, read as they come."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port

    def lines(self) -> list[list[str]]:
        return [
            line.split() for line in self.proc.output().splitlines() if line[:2] in ("S ", "M ")
        ]

    def arrivals(self, prefix: str) -> list[float]:
        return [float(p[1]) for p in self.lines() if p[0] == "M" and p[2].startswith(prefix)]

    def sessions_between(self, start: float, end: float) -> int:
        return sum(1 for p in self.lines() if p[0] == "S" and start <= float(p[1]) <= end)

    def recipients(self, prefix: str) -> list[str]:
        return [p[2] for p in self.lines() if p[0] == "M" and p[2].startswith(prefix)]


async def sign_ups(base: str, count: int, prefix: str) -> None:
    limit = asyncio.Semaphore(SIGN_UP_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, headers=CLIENT, timeout=30) as http:

        async def one(i: int) -> None:
            async with limit:
                body = {"email": f"{prefix}{i}@example.com", "full_name": f"Bench {i}"}
                response = await http.post("/users", json=body)
                response.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


async def watch(phase: Phase, sink: Sink, pid: int, backends_of: str, database: URL) -> None:
    """Until every message arrived: the process's CPU and the wall time it was measured over,
    its RSS, the PostgreSQL connections the application named `backends_of` holds, and their
    backends' CPU (kept per backend, as backends end with their connections)."""
    engine = make_engine("bench", url=database)
    backend_cpu: dict[int, float] = {}
    own_cpu = 0.0
    began = time.monotonic()
    query = text(
        "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND datname = :db"
    )
    try:
        while len(sink.arrivals(phase.prefix)) < phase.count:
            async with engine.connect() as conn:
                pids = list(
                    await conn.scalars(query, {"name": backends_of, "db": database.database})
                )
            phase.peak_connections = max(phase.peak_connections, len(pids))
            for backend in pids:
                backend_cpu[backend] = max(
                    backend_cpu.get(backend, 0.0), cpu_seconds(backend, False)
                )
            own_cpu = max(own_cpu, cpu_seconds(pid))
            phase.peak_rss_mb = max(phase.peak_rss_mb, rss_mb(pid))
            await asyncio.sleep(SAMPLE_EVERY)
    finally:
        await engine.dispose()
    phase.cpu["worker"] = own_cpu
    phase.worker_seconds = time.monotonic() - began
    phase.cpu["postgres"] = sum(backend_cpu.values())


def measure_ours(procs: Processes, sink: Sink, count: int) -> Phase:
    phase = Phase(f"ours ({CONCURRENT.pool} -c {CONCURRENT.concurrency})", "io", count)
    api, base = procs.api()
    api_cpu = cpu_seconds(api.popen.pid)
    asyncio.run(sign_ups(base, count, phase.prefix))
    phase.cpu["api"] = cpu_seconds(api.popen.pid) - api_cpu
    sink_cpu, started = cpu_seconds(sink.proc.popen.pid), time.time()
    worker = procs.start(
        "worker",
        CONCURRENT.command((sys.executable, "-m", "celery")),
        WORKER_NAME=CONCURRENT.name,
        PROMETHEUS_MULTIPROC_DIR=str(procs.tmp_path / "metrics"),
        WORKER_METRICS_PORT=str(free_port()),
    )
    worker.wait_for_output(" ready.", timeout=60)
    worker_base = cpu_seconds(worker.popen.pid)  # start-up (imports) is not per email
    asyncio.run(watch(phase, sink, worker.popen.pid, "backend.worker", DATABASE))
    phase.cpu["worker"] -= worker_base
    phase.cpu["sink"] = cpu_seconds(sink.proc.popen.pid) - sink_cpu
    phase.arrivals = sink.arrivals(phase.prefix)
    phase.sessions = sink.sessions_between(started, time.time())
    worker.stop()
    api.stop()
    duplicates = len(sink.recipients(phase.prefix)) - len(set(sink.recipients(phase.prefix)))
    if duplicates:
        raise SystemExit(f"ours: {duplicates} duplicate emails")
    return phase


def arq_environment() -> None:
    if ARQ_PYTHON.exists():
        return
    print("[bench-io] creating the reference's environment (arq pins redis<6)", flush=True)
    subprocess.run(["uv", "venv", "-q", str(ARQ_ENV), "--python", "python3.11"], check=True)
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(ARQ_PYTHON),
         "arq==0.28.0", "asyncpg", "aiosmtplib"],
        check=True,
    )  # fmt: skip


async def insert_reference_users(count: int, prefix: str) -> int:
    engine = make_engine("bench", url=DATABASE)
    try:
        async with engine.begin() as conn:
            rows = [
                {"email": f"{prefix}{i}@example.com", "full_name": f"Ref {i}"} for i in range(count)
            ]
            ids = list(await conn.scalars(insert(User).values(rows).returning(User.id)))
    finally:
        await engine.dispose()
    if ids != list(range(ids[0], ids[0] + count)):
        raise SystemExit("the reference's users did not get consecutive ids")
    return ids[0]


def measure_reference(procs: Processes, sink: Sink, count: int, redis_url: str) -> Phase:
    phase = Phase("arq (max_jobs=100, pool 20)", "arq", count)
    arq_environment()
    first_id = asyncio.run(insert_reference_users(count, phase.prefix))
    arq_redis = redis_url.rsplit("/", 1)[0] + "/1"
    script = str(REPO / "bench" / "arq_reference.py")
    subprocess.run(
        [str(ARQ_PYTHON), script, "enqueue", arq_redis, str(first_id), str(count)], check=True
    )
    database = DATABASE.set(drivername="postgresql", query={"application_name": "arq.reference"})
    sink_cpu, started = cpu_seconds(sink.proc.popen.pid), time.time()
    worker = procs.start(
        "arq",
        [
            str(ARQ_PYTHON),
            script,
            "work",
            arq_redis,
            database.render_as_string(False),
            str(sink.port),
        ],
    )
    asyncio.run(watch(phase, sink, worker.popen.pid, "arq.reference", DATABASE))
    phase.cpu["sink"] = cpu_seconds(sink.proc.popen.pid) - sink_cpu
    phase.arrivals = sink.arrivals(phase.prefix)
    phase.sessions = sink.sessions_between(started, time.time())
    worker.stop()
    return phase


def report(ours: Phase, reference: Phase | None, count: int, delay: float) -> list[str]:
    sides = [ours, *([reference] if reference else [])]
    width = 34

    def row(label: str, values: list[str]) -> str:
        return f"{label:<38}" + "".join(f"{v:>{width}}" for v in values)

    lines = [
        f"bench-io: {count} sign-ups' welcome emails, the mail server taking "
        f"{delay * 1000:.0f} ms per message",
        row("", [side.name for side in sides]),
        row("steady drain (p10-p90), emails/s", [f"{s.steady_rate:.0f}" for s in sides]),
    ]
    for process in ("worker", "sink", "postgres", "api"):
        lines.append(
            row(f"CPU ms per email: {process}", [f"{s.per_email_ms(process):.2f}" for s in sides])
        )
    lines += [
        row("peak PostgreSQL connections (worker)", [str(s.peak_connections) for s in sides]),
        row(
            "messages per SMTP session",
            [f"{s.count / max(1, s.sessions):.1f} ({s.sessions} sessions)" for s in sides],
        ),
        row("worker busy, cores (CPU s / wall s)", [f"{s.worker_cores:.2f}" for s in sides]),
        row("worker RSS, MB (peak)", [f"{s.peak_rss_mb:.0f}" for s in sides]),
    ]
    if reference is not None:
        ratio = ours.steady_rate / reference.steady_rate
        lines.append(f"ratio ours / arq: {ratio:.2f} (the issue asks at least 1.5)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sign-ups", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per message")
    parser.add_argument("--no-reference", action="store_true", help="skip the arq reference")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-io-") as tmp:
        work = Path(tempfile.mkdtemp(prefix="bench-io-")) if args.keep else Path(tmp)
        create_migrated_database(DATABASE, "bench")
        procs = Processes(work, DATABASE, redis_url="")
        try:
            _, redis_port = procs.redis_server()
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            port = free_port()
            sink = Sink(
                procs.start(
                    "sink",
                    [
                        sys.executable,
                        "-m",
                        "bench.smtp_sink",
                        "--port",
                        str(port),
                        "--delay",
                        str(args.delay),
                    ],
                ),
                port,
            )
            sink.proc.wait_for_output("sink ready")
            procs.env.update(
                REDIS_URL=redis_url,
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=str(port),
                ENVIRONMENT="development",  # as `make run`
            )
            ours = measure_ours(procs, sink, args.sign_ups)
            reference = (
                None
                if args.no_reference
                else measure_reference(procs, sink, args.sign_ups, redis_url)
            )
        finally:
            procs.stop_all()
            asyncio.run(drop_database(DATABASE, "bench"))  # no run leaves its database behind
        print("\n".join(report(ours, reference, args.sign_ups, args.delay)), flush=True)
        if args.keep:
            print(f"logs in {work}")


if __name__ == "__main__":
    main()
