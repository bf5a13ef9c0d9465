"""Does the outbox cost `POST /users` anything, next to the naive insert-commit-send_task?

Two apps, each under one uvicorn process started as docs/deploy.md starts the API (uvicorn's
defaults: log level info, access log on), each logging every request to its log file (the
product its own JSON line, the naive app uvicorn's access line), on the same PostgreSQL server
(a fresh migrated database each) and the same Redis (the benchmark's own):

- product: `api.main:create_app`, whose `POST /users` commits the user and its welcome-email
  run in one transaction, answers, and leaves the publish to its background publisher;
- naive: `bench.naive_app`, what the common templates do: insert, commit, then Celery's
  blocking `send_task` inside the async endpoint.

wrk loads each for a fixed time at 32 connections (Debian's package: `make bench-api`
installs it when missing), with a Lua script that makes every body unique. Each timed phase
follows a warm-up on the same app; the apps alternate first place across rounds, so machine
noise falls on both.

Prints requests/s, p50, p99 and non-2xx responses for both, the ratio product/naive (target
>= 1.0, and the product's p99 no worse than the naive one's), and checks that both sides really
enqueued: every product run published by the API's publisher (none left pending), and one
message in Redis per user on each side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import URL

from bench.services import own_redis, url_of
from shared.settings import DEV_API_TOKEN
from tests.fixtures.postgres import create_migrated_database, drop_database, engine_on
from tests.fixtures.processes import Proc, Processes

PRODUCT_DATABASE = "backend_bench_api"
NAIVE_DATABASE = "backend_bench_api_naive"
QUEUE = "default"  # where both sides' welcome-email messages land
CONNECTIONS = 32
WRK_THREADS = 2  # wrk's default; the reference figures were taken with it
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
PUBLISH_WAIT = 5.0  # how long the product's publisher may take to catch up after a phase
LUA_SCRIPT = Path(__file__).resolve().with_name("api_post_users.lua")
RESULT_PREFIX = "BENCH_API_RESULT "


@dataclass(frozen=True)
class Plan:
    seconds: float
    warmup: float
    repeat: int


@dataclass(frozen=True)
class LoadResult:
    requests: int  # responses received within the phase
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class Side:
    label: str
    module: str
    database: str
    headers: dict[str, str]
    redis_url: str  # the benchmark's own Redis, shared by both sides
    url: URL | None = None
    server: Server | None = None
    results: list[LoadResult] = field(default_factory=list)
    messages: int = 0  # pushed onto Redis's `default` list while this side was loaded
    cpu_seconds: float = 0.0  # the uvicorn process's CPU time over the timed phases

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / sum(r.requests for r in self.results)

    @property
    def rate(self) -> float:
        return sum(r.requests for r in self.results) / sum(r.seconds for r in self.results)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.results)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.results)

    @property
    def non_2xx(self) -> int:
        return sum(r.non_2xx for r in self.results)

    @property
    def socket_errors(self) -> int:
        return sum(r.socket_errors for r in self.results)


@dataclass
class Server:
    """One uvicorn process serving one app, as production runs the API (one process each)."""

    proc: Proc
    base_url: str

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far: with one process, CPU per request
        bounds the rate (1 / CPU per request) whatever the database and Redis do."""
        times = psutil.Process(self.proc.popen.pid).cpu_times()
        return times.user + times.system


def start_server(processes: Processes, side: Side, database: URL) -> Server:
    proc, base_url = processes.api(
        app=side.module,
        DATABASE_URL=database.render_as_string(hide_password=False),
        # test, not production: production refuses the development client token. Like
        # production, it logs JSON lines at INFO, one per request.
        ENVIRONMENT="test",
        LOG_LEVEL="INFO",
    )
    return Server(proc, base_url)


# --- the load: wrk ----------------------------------------------------------------------------


def wrk(base_url: str, headers: dict[str, str], seconds: float) -> LoadResult:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is missing: `make bench-api` installs it (Debian's package)")
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    argv = [
        found, "-t", str(WRK_THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds:g}s",
        "--timeout", "10s", "--latency", *header_args, "-s", str(LUA_SCRIPT), base_url,
        "--", uuid.uuid4().hex[:12],
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    return LoadResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        non_2xx=raw["non_2xx"],
        socket_errors=raw["socket_errors"],
    )


# --- Redis and database checks -------------------------------------------------------------


async def queue_length(side: Side) -> int:
    redis: Redis = Redis.from_url(side.redis_url)
    try:
        return int(await redis.llen(QUEUE))
    finally:
        await redis.aclose()


async def count(database: URL, query: str) -> int:
    async with engine_on(database, "bench") as engine, engine.connect() as conn:
        return int(await conn.scalar(text(query)) or 0)


UNPUBLISHED = "SELECT count(*) FROM task_runs WHERE published_at IS NULL"
USERS = "SELECT count(*) FROM users"
SETTLE_POLL = 0.05
SETTLE_QUIET = 0.3  # unchanged this long: the requests wrk left in flight have finished


async def settle(side: Side) -> str:
    """Wait until the side has finished what the phase started, at most PUBLISH_WAIT seconds.

    wrk stops with up to 32 requests in flight; the server still completes them (a naive one
    commits and then publishes), so counting messages at once would hand them to the next
    phase. For the product, it also waits for the publisher: one that fell behind would
    flatter its figures, so the unpublished count at the end and the catch-up time are shown.
    """
    assert side.url is not None
    start = time.perf_counter()
    pending_at_end = await count(side.url, UNPUBLISHED) if side.label == "product" else 0
    state: tuple[int, ...] = ()
    quiet_since = start
    while time.perf_counter() - start < PUBLISH_WAIT:
        pending = await count(side.url, UNPUBLISHED) if side.label == "product" else 0
        now = (await queue_length(side), await count(side.url, USERS), pending)
        if now != state:
            state, quiet_since = now, time.perf_counter()
        elif not pending and time.perf_counter() - quiet_since >= SETTLE_QUIET:
            break
        await asyncio.sleep(SETTLE_POLL)
    pending = state[2] if state else pending_at_end
    return (
        f"{pending_at_end} unpublished when the load stopped, {pending} after "
        f"{time.perf_counter() - start:.2f} s"
    )


# --- the run ---------------------------------------------------------------------------------


def smoke_post(side: Side) -> None:
    """One request before any load: a wrong token or a broken app fails here, by name."""
    assert side.server is not None
    response = httpx.post(
        f"{side.server.base_url}/users",
        json={"email": f"smoke-{uuid.uuid4().hex[:12]}@example.com", "full_name": "Smoke"},
        headers=side.headers,
        timeout=10,
    )
    if response.status_code != 201:
        raise RuntimeError(
            f"{side.label}: POST /users gave {response.status_code}: {response.text}"
        )


def load_phase(side: Side, plan: Plan, lags: list[str]) -> LoadResult:
    assert side.server is not None
    assert side.url is not None
    before = asyncio.run(queue_length(side))
    wrk(side.server.base_url, side.headers, plan.warmup)
    cpu_before = side.server.cpu_seconds()
    result = wrk(side.server.base_url, side.headers, plan.seconds)
    side.server.proc.check_alive()
    # Read before settling, so the product's publisher catching up is left out; it is small
    # (a few dozen runs, see "unpublished when the load stopped").
    side.cpu_seconds += side.server.cpu_seconds() - cpu_before
    settled = asyncio.run(settle(side))
    if side.label == "product":
        lags.append(settled)
    side.messages += asyncio.run(queue_length(side)) - before
    side.results.append(result)
    return result


def run(plan: Plan, product: Side, naive: Side) -> list[str]:
    lines: list[str] = []
    lags: list[str] = []
    for side in (product, naive):
        before = asyncio.run(queue_length(side))
        smoke_post(side)
        asyncio.run(settle(side))
        side.messages += asyncio.run(queue_length(side)) - before
    for number in range(plan.repeat):
        order = (product, naive) if number % 2 == 0 else (naive, product)
        for side in order:
            r = load_phase(side, plan, lags)
            lines.append(
                f"  round {number + 1} {side.label:<8}{r.rate:8.1f} req/s   p50 {r.p50_ms:7.1f} ms"
                f"   p99 {r.p99_ms:7.1f} ms   non-2xx {r.non_2xx}   socket errors "
                f"{r.socket_errors}   ({r.requests:,} in {r.seconds:.1f} s)"
            )
    publishing = (f"  product publisher after phase {i}: {lag}" for i, lag in enumerate(lags, 1))
    return [*lines, "", *publishing]


def report(plan: Plan, product: Side, naive: Side, rounds: list[str], load: str) -> list[str]:
    assert product.url is not None
    assert naive.url is not None
    p_users = asyncio.run(count(product.url, USERS))
    p_runs = asyncio.run(count(product.url, "SELECT count(*) FROM task_runs"))
    p_pending = asyncio.run(count(product.url, UNPUBLISHED))
    n_users = asyncio.run(count(naive.url, USERS))
    ratio = product.rate / naive.rate
    lines = [
        f"POST /users, one uvicorn process per app, wrk -t{WRK_THREADS} -c{CONNECTIONS} "
        f"--latency; {plan.repeat} rounds of "
        f"{plan.seconds:g} s per app after a {plan.warmup:g} s warm-up each, order alternating.",
        "p50 and p99 are the median of the rounds' own percentiles.",
        f"Machine: {os.cpu_count()} cores; {load}.",
        "",
        *rounds,
        "",
    ]
    for side in (product, naive):
        lines.append(
            f"{side.label:<8}{side.rate:8.1f} req/s   p50 {side.p50_ms:7.1f} ms   p99 "
            f"{side.p99_ms:7.1f} ms   non-2xx {side.non_2xx}   socket errors {side.socket_errors}"
            f"   server CPU {side.cpu_ms_per_request:.2f} ms/request"
        )
    throughput_met = ratio >= 1.0
    latency_met = product.p99_ms <= naive.p99_ms
    lines += [
        "",
        f"ratio product/naive (req/s): {ratio:.2f}; target >= 1.0: "
        f"{'met' if throughput_met else 'MISSED'}",
        f"p99 product {product.p99_ms:.1f} ms vs naive {naive.p99_ms:.1f} ms; target no worse: "
        f"{'met' if latency_met else 'MISSED'}",
        "",
        "enqueued (warm-ups and the smoke request included):",
        f"  product: {p_users:,} users, {p_runs:,} task runs, {p_runs - p_pending:,} published by "
        f"the API's publisher, {p_pending:,} pending; {product.messages:,} messages in Redis "
        f"'{QUEUE}'",
        f"  naive:   {n_users:,} users; {naive.messages:,} messages in Redis '{QUEUE}'",
    ]
    if p_runs != p_users or p_pending or product.messages != p_users:
        lines.append("  WARNING: the product's users, runs and messages do not match")
    if naive.messages != n_users:
        lines.append("  WARNING: the naive side's users and messages do not match")
    return lines


def parse_plan(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed load per app per round")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed load before each")
    parser.add_argument(
        "--repeat", type=int, default=4, help="rounds, alternating which goes first"
    )
    parser.add_argument("--quick", action="store_true", help="5 s phases: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 5.0
    return Plan(args.seconds, args.warmup, args.repeat)


def main(argv: list[str] | None = None) -> None:
    plan = parse_plan(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
        own_redis(Path(tmp)) as redis_url,
    ):
        product = Side(
            "product", "api.main:create_app", PRODUCT_DATABASE,
            {"Authorization": f"Bearer {DEV_API_TOKEN}"}, redis_url,
        )  # fmt: skip
        naive = Side("naive", "bench.naive_app:create_app", NAIVE_DATABASE, {}, redis_url)
        urls = {side.label: url_of(side.database) for side in (product, naive)}
        processes = Processes(Path(tmp), urls["product"], redis_url)
        try:
            for side in (product, naive):
                side.url = create_migrated_database(urls[side.label], "bench")
                side.server = start_server(processes, side, side.url)
                print(
                    f"{side.label}: uvicorn pid {side.server.proc.popen.pid} on "
                    f"{side.server.base_url}",
                    flush=True,
                )
            before = os.getloadavg()[0]
            rounds = run(plan, product, naive)
            # Anything else running here shares the two cores: the load average tells.
            load = f"1-min load average {before:.2f} before, {os.getloadavg()[0]:.2f} after"
        finally:
            processes.stop_all()
        try:
            lines = report(plan, product, naive, rounds, load)
        finally:
            for url in urls.values():  # no run leaves its databases behind
                asyncio.run(drop_database(url, "bench"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
