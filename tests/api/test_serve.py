"""The api image's command (`python -m api.serve`) listens where API_PORT and API_BIND_ADDRESS
say, and its healthcheck (`python -m api.probe`) asks exactly that address."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from tests.fixtures.ports import free_port
from tests.fixtures.processes import Processes
from tests.fixtures.waiting import wait_until


def probe(env: dict[str, str], *args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "api.probe", *args],
        env=env, capture_output=True, timeout=10, check=False,
    ).returncode  # fmt: skip


def test_serve_listens_on_the_configured_port_and_the_probe_follows(
    processes: Processes,
) -> None:
    port = free_port()
    env = {"API_PORT": str(port), "API_BIND_ADDRESS": "127.0.0.1"}
    api = processes.start("api", [sys.executable, "-m", "api.serve"], **env)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 30, f"api.serve on port {port}")
    probe_env = {**processes.env, **env}
    assert probe(probe_env, "readyz") == 0
    assert probe(probe_env, "healthz") == 0
    assert probe({**probe_env, "API_PORT": str(free_port())}, "readyz") == 1, "another port"
    assert probe(probe_env, "metrics") == 2, "only the two probe paths"

    # uvicorn shuts down, then re-raises the signal: -SIGTERM outside a container; as PID 1 of
    # a container the re-raised signal is ignored and it exits 0 (the smoke test checks that).
    assert api.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in api.output()
    assert probe(probe_env, "readyz") == 1, "nothing answers once it stopped"
