"""`make smoke-images`: the images run as production runs them, against services of this run.

Every container uses the host network and listens on 127.0.0.1 only, on free ports: a fresh
PostgreSQL database on the configured server, a Redis server and an SMTP sink of this run's own.
The containers get what the pods get: a read-only root filesystem, a tmpfs at /tmp, no
capabilities, no privilege escalation, UID 10001, and the commands of docs/deploy.md.
Everything is removed at the end, also when a check fails.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email import message_from_bytes

import asyncpg
import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from scripts.containers.build import Images
from scripts.containers.checks import answers, enqueue, sign_up, wait_until
from scripts.containers.engine import Engine, say
from scripts.containers.standins import REPO
from shared.contracts import PRUNE_LOGS
from shared.settings import settings

DEPLOY_DOC = REPO / "docs" / "deploy.md"
# Within every grace period of the manifests and compose (the api's 30 s is the shortest).
STOP_GRACE_SECONDS = 30
START_SECONDS = 90.0
HARDENING = [
    "--network", "host",
    "--read-only", "--tmpfs", "/tmp:rw,mode=1777",  # noqa: S108 - the container's own tmpfs
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    "--user", "10001:10001",
]  # fmt: skip


@dataclass(frozen=True)
class Process:
    """One row of the process table in docs/deploy.md."""

    name: str
    image: str  # backend-api or backend-worker
    argv: list[str]
    env: dict[str, str]  # the `NAME=value` items beside the command

    @property
    def queues(self) -> set[str]:
        if "-Q" not in self.argv:
            return set()
        return set(self.argv[self.argv.index("-Q") + 1].split(","))


ROW = re.compile(r"^\| (?P<name>[\w-]+) \| `(?P<image>backend-\w+)` \| (?P<cell>[^|]+) \|")
ENV_ITEM = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S*)$")


def documented_processes() -> list[Process]:
    found: list[Process] = []
    for line in DEPLOY_DOC.read_text().splitlines():
        if (row := ROW.match(line)) is None:
            continue
        command, *items = re.findall(r"`([^`]+)`", row["cell"])
        env = {m[1]: m[2] for item in items if (m := ENV_ITEM.match(item))}
        found.append(Process(row["name"], row["image"], shlex.split(command), env))
    if not any(p.name == "migrate" for p in found) or not any(p.queues for p in found):
        raise RuntimeError(f"no process table with migrate and a worker in {DEPLOY_DOC}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mailbox:
    """An SMTP sink (aiosmtpd) that keeps the recipients of what it receives."""

    def __init__(self) -> None:
        self.recipients: list[str] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = message_from_bytes(envelope.original_content or b"")
        with self._lock:
            self.recipients.append(str(message["To"]))
        return "250 Message accepted for delivery"

    def delivered_to(self, address: str) -> bool:
        with self._lock:
            return address in self.recipients


@contextmanager
def smtp_sink() -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@contextmanager
def redis_server() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _accepts(port), 20, f"redis-server on port {port}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def _admin(statement: str) -> None:
    url = settings.database_url_for("postgres").set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"smoke_images_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield settings.database_url_for(name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Containers:
    """The containers of one run, removed by id at the end."""

    def __init__(self, engine: Engine, run: str) -> None:
        self.engine, self.run = engine, run
        self.ids: dict[str, str] = {}

    def start(self, name: str, image: str, argv: list[str], env: dict[str, str]) -> str:
        flags = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        container = self.engine.output(
            "run", "--detach", "--name", f"backend-smoke-{self.run}-{name}",
            *HARDENING, *flags, image, *argv,
        )  # fmt: skip
        self.ids[name] = container
        return container

    def once(self, image: str, argv: list[str], env: dict[str, str]) -> None:
        """A one-off container (migrate) that must exit 0."""
        flags = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        result = self.engine.run(
            "run", "--rm", *HARDENING, *flags, image, *argv, check=False, quiet=True
        )
        assert result.returncode == 0, (
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )

    def exec(self, name: str, argv: list[str]) -> int:
        return self.engine.run("exec", self.ids[name], *argv, check=False, quiet=True).returncode

    def logs(self, name: str) -> str:
        result = self.engine.run("logs", self.ids[name], check=False, quiet=True)
        return result.stdout + result.stderr

    def show_logs_on_failure(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        if kind is None:
            return
        for name in self.ids:
            say(f"--- last lines of {name}:\n{self.logs(name)[-2500:]}")

    def remove_all(self) -> None:
        for name, container in self.ids.items():
            result = self.engine.run("rm", "--force", "--volumes", container, check=False)
            if result.returncode != 0:
                say(f"could not remove container {name} ({container[:12]})")


def smoke_test(engine: Engine, images: Images) -> None:
    started = time.monotonic()
    processes = documented_processes()
    image_for = {"backend-api": images.api, "backend-worker": images.worker}
    run = uuid.uuid4().hex[:8]
    admin_token, client_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database())
        redis_port = stack.enter_context(redis_server())
        mailbox, smtp_port = stack.enter_context(smtp_sink())
        containers = Containers(engine, run)
        stack.callback(containers.remove_all)
        stack.push(containers.show_logs_on_failure)
        api_port = free_port()
        env = {
            "ENVIRONMENT": "production",
            "DATABASE_URL": database_url,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "ADMIN_TOKEN": admin_token,
            "API_TOKENS": client_token,
            "API_PORT": str(api_port),
            "API_BIND_ADDRESS": "127.0.0.1",
            "METRICS_BIND_ADDRESS": "127.0.0.1",
            "HEARTBEAT_DIR": "/tmp",  # noqa: S108 - inside the container
        }
        say(f"database {database_url.rsplit('/', 1)[1]}, redis :{redis_port}, smtp :{smtp_port}")

        migrate = next(p for p in processes if p.name == "migrate")
        containers.once(image_for[migrate.image], migrate.argv, env)
        say("migrate: alembic upgrade head exited 0")

        for process in processes:
            if process.name == "migrate":
                continue
            own = {"WORKER_METRICS_PORT": str(free_port()), "BEAT_METRICS_PORT": str(free_port())}
            if process.queues:  # a worker: its pool children write metrics there (as compose)
                own["PROMETHEUS_MULTIPROC_DIR"] = "/tmp/prometheus"  # noqa: S108
            containers.start(
                process.name, image_for[process.image], process.argv, env | own | process.env
            )
        running = [p for p in processes if p.name in containers.ids]

        base = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: answers(f"{base}/readyz"), START_SECONDS, "the api's /readyz")
        for process in running:
            _wait_for_probe(containers, process)

        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {client_token}"}, timeout=10
        ) as http:
            welcome = sign_up(http, mailbox.delivered_to)
            prune = enqueue(http, admin_token, PRUNE_LOGS.name, {"days": 7})
        _ran_on_its_queue(containers, running, welcome, "default")
        _ran_on_its_queue(containers, running, prune, str(PRUNE_LOGS.queue))

        _isolation(engine, images)
        for process in reversed(running):
            _stops_cleanly(engine, containers, process.name)
    say(f"smoke test passed in {time.monotonic() - started:.0f} s")


def _wait_for_probe(containers: Containers, process: Process) -> None:
    probe = _probe(process)
    wait_until(
        lambda: containers.exec(process.name, probe) == 0,
        START_SECONDS,
        f"{' '.join(probe)} in {process.name}",
    )
    say(f"probe passes in {process.name}: {' '.join(probe)}")


def _probe(process: Process) -> list[str]:
    if process.image == "backend-api":
        return ["python", "-m", "api.probe", "readyz"]
    if "beat" in process.argv:
        return ["python", "-m", "worker.probe", "beat"]
    return ["python", "-m", "worker.probe", "worker", "--ready"]


def _ran_on_its_queue(
    containers: Containers, processes: list[Process], run_id: str, queue: str
) -> None:
    """The worker that logged the run is one that consumes its queue, and no other did."""
    ran_on = [p.name for p in processes if p.queues and run_id in containers.logs(p.name)]
    consumers = {p.name for p in processes if queue in p.queues}
    assert ran_on, f"no worker logged run {run_id}"
    assert set(ran_on) <= consumers, f"run {run_id} of queue {queue} ran on {ran_on}"
    say(f"run {run_id} ran on {', '.join(ran_on)}, a consumer of queue {queue}")


IMPORTS = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        found[name] = True
    except ImportError:
        found[name] = False
print(json.dumps(found))
"""


def _isolation(engine: Engine, images: Images) -> None:
    """Each image imports its own code and cannot import the other side's (one container per
    image, each module imported for real)."""
    expected = {
        images.api: {"api.main": True, "fastapi": True, "uvicorn": True,
                     "worker.celery_app": False, "celery": False},
        images.worker: {"worker.celery_app": True, "celery": True,
                        "fastapi": False, "uvicorn": False, "api": False},
    }  # fmt: skip
    for image, modules in expected.items():
        found = json.loads(
            engine.output("run", "--rm", *HARDENING, image, "python", "-c", IMPORTS, *modules)
        )
        assert found == modules, f"imports in {image}: {found}, expected {modules}"
    say("isolation: the api image cannot import worker code or celery; the worker image cannot "
        "import fastapi, uvicorn or the api")  # fmt: skip


def _stops_cleanly(engine: Engine, containers: Containers, name: str) -> None:
    started = time.monotonic()
    engine.run("stop", "--time", str(STOP_GRACE_SECONDS), containers.ids[name],
               timeout=STOP_GRACE_SECONDS + 30)  # fmt: skip
    took = time.monotonic() - started
    code = engine.output("inspect", "--format", "{{.State.ExitCode}}", containers.ids[name])
    assert code == "0", f"{name} exited {code} on docker stop:\n{containers.logs(name)[-3000:]}"
    assert took < STOP_GRACE_SECONDS, f"{name} took {took:.1f} s to stop"
    say(f"docker stop {name}: exit 0 in {took:.1f} s")
