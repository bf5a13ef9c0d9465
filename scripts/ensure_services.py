"""Make sure PostgreSQL and Redis answer on the configured URLs before tests or `make run`.

A service that does not answer on a loopback address is started if it is installed, and
installed with apt-get first when it is missing and we run as root (a fresh CI machine). A
service on another host is never touched: we only say what to start.

Tools, installed with apt-get when missing and we run as root: --redis-server (the test suite
starts a Redis of its own, whichever Redis REDIS_URL names) and --wrk (for `make bench-api`).

Usage: python scripts/ensure_services.py [--create-database] [--redis-server] [--wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from sqlalchemy.engine import URL

from shared.settings import settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def say(message: str) -> None:
    print(f"[services] {message}", flush=True)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_until_answers(name: str, host: str, port: int, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(host, port):
            return True
        time.sleep(0.25)
    say(f"{name} still does not answer on {host}:{port}")
    return False


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"[services] {' '.join(packages)} missing: install it, or run as root")
    say(f"installing {' '.join(packages)} with apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=APT_ENV)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=APT_ENV,
    )


def trust_loopback(version: str) -> None:
    """A cluster we installed ourselves: let local clients in without a password, as a
    developer's or CI machine expects (never done to a cluster we did not create)."""
    hba = Path(f"/etc/postgresql/{version}/main/pg_hba.conf")
    rules = "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
    hba.write_text(rules + hba.read_text())


def start_postgres() -> None:
    installed_now = False
    if not shutil.which("pg_ctlcluster"):
        apt_install("postgresql")
        installed_now = True
    clusters = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if not clusters:
        raise SystemExit("[services] PostgreSQL is installed but has no cluster")
    version = clusters[-1]
    if installed_now:
        trust_loopback(version)
    say(f"starting PostgreSQL {version}")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=False
    )


def start_redis(port: int) -> None:
    if not shutil.which("redis-server"):
        apt_install("redis-server")
    say("starting Redis")
    subprocess.run(
        [
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
            "--port", str(port), "--save", "", "--appendonly", "no",
        ],
        check=True,
    )  # fmt: skip


def ensure(name: str, host: str, port: int, start: Callable[[], None]) -> None:
    if answers(host, port):
        return
    if host not in LOOPBACK:
        raise SystemExit(f"[services] {name} does not answer on {host}:{port}: start it there")
    say(f"{name} does not answer on {host}:{port}")
    start()
    if not wait_until_answers(name, host, port):
        raise SystemExit(f"[services] could not start {name}: start it by hand")


async def create_database(url: URL) -> None:
    maintenance = url.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(maintenance.render_as_string(hide_password=False))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database)
        if not exists:
            say(f"creating database {url.database}")
            await conn.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--create-database", action="store_true")
    parser.add_argument("--redis-server", action="store_true", help="install it if missing")
    parser.add_argument("--wrk", action="store_true", help="install wrk if it is missing")
    args = parser.parse_args()
    for wanted, tool, package in (
        (args.redis_server, "redis-server", "redis-server"),
        (args.wrk, "wrk", "wrk"),
    ):
        if wanted and not shutil.which(tool):
            apt_install(package)

    db = settings.database
    ensure("PostgreSQL", db.host or "127.0.0.1", db.port or 5432, start_postgres)
    redis = urlsplit(settings.redis_url.get_secret_value())
    redis_port = redis.port or 6379
    ensure("Redis", redis.hostname or "127.0.0.1", redis_port, lambda: start_redis(redis_port))
    if args.create_database:
        asyncio.run(create_database(db))
    say("PostgreSQL and Redis answer")


if __name__ == "__main__":
    main()
