"""The two Dockerfiles: hadolint clean at warning level, and built the way the issue asks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.tools import DOCKERFILES, REPO, environment_tool, output, run

API_CMD = ["python", "-m", "api.serve"]
WORKER_CMD = [
    "celery", "-A", "worker.celery_app", "worker",
    "-P", "prefork", "-c", "2", "-Q", "default,maintenance", "--loglevel", "INFO",
]  # fmt: skip
RUNTIME_IMAGE = "python:3.11-slim"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cc|make)\b")


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arguments for instruction, arguments in self.instructions if instruction == keyword]


def parse(path: Path) -> list[Stage]:
    """Dockerfile instructions grouped by stage, continuation lines joined, ARG defaults applied
    to FROM."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(image=image, name=name))
        elif not stages and keyword == "ARG":
            key, _, default = arguments.partition("=")
            global_args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((keyword, " ".join(arguments.split())))
    return stages


@pytest.mark.parametrize("member", sorted(DOCKERFILES))
def test_hadolint_passes_at_warning_level(member: str) -> None:
    result = run(
        [environment_tool("hadolint"), "--no-color", "--failure-threshold", "warning",
         str(DOCKERFILES[member])]
    )  # fmt: skip
    assert result.returncode == 0, output(result)


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD python app.py\n"
    )
    result = run(
        [environment_tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(bad)],
        cwd=tmp_path,
    )
    assert result.returncode != 0, output(result)
    assert "DL3007" in result.stdout
    assert "DL3025" in result.stdout


@pytest.mark.parametrize(("member", "command"), [("api", API_CMD), ("worker", WORKER_CMD)])
def test_dockerfile_builds_with_uv_and_runs_slim(member: str, command: list[str]) -> None:
    stages = parse(DOCKERFILES[member])
    assert len(stages) >= 2, "a multi-stage build"
    by_name = {stage.name: stage for stage in stages}
    builder, runtime = by_name["builder"], stages[-1]

    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", by_name["uv"].image), (
        "UV_IMAGE defaults to a pinned uv image"
    )
    assert "--from=uv /uv /uvx /bin/" in builder.args("COPY"), "uv comes from the UV_IMAGE stage"

    syncs = [step for step in builder.args("RUN") if "uv sync" in step]
    assert len(syncs) == 2, "dependencies first, then the project"
    for sync in syncs:
        for flag in ("--locked", "--no-dev", f"--package {member}", "--no-editable"):
            assert flag in sync, f"{flag} missing from: {sync}"
        assert "--mount=type=cache,target=/root/.cache/uv" in sync
    deps_layer, project_layer = syncs
    assert "--no-install-workspace" in deps_layer
    assert "source=uv.lock" in deps_layer
    assert "--no-install-workspace" not in project_layer

    assert runtime.image == RUNTIME_IMAGE
    assert runtime.name == "runtime"
    assert runtime.args("CMD") == [json.dumps(command)], "exec-form CMD with the contract argv"
    assert json.loads(runtime.args("CMD")[0]) == command
    assert runtime.args("USER") == ["10001:10001"], "numeric, non-root"
    assert not any(COMPILERS.search(step) for step in runtime.args("RUN")), "no compilers"
    assert not any("uv" in copy for copy in runtime.args("COPY") if "--from=" in copy)
    from_builder = [copy for copy in runtime.args("COPY") if copy.startswith("--from=")]
    assert from_builder == ["--from=builder /opt/venv /opt/venv"], "only the environment"
    env = " ".join(runtime.args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env


@pytest.mark.parametrize("member", sorted(DOCKERFILES))
def test_dockerfile_builds_without_a_registry_and_with_any_builder(member: str) -> None:
    """No frontend image to fetch, mount targets podman/buildah accept, both base images as
    build arguments, and no path that only the official Python image has."""
    text = DOCKERFILES[member].read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    targets = re.findall(r"--mount=\S*?target=([^,\s]+)", text)
    assert targets, "the dependency layer mounts its inputs"
    assert all(target.startswith("/") for target in targets), targets
    global_args = re.findall(r"^ARG (\w+)=", text.split("\nFROM ", 1)[0], re.MULTILINE)
    assert {"PYTHON_IMAGE", "UV_IMAGE"} <= set(global_args)
    stages = parse(DOCKERFILES[member])
    assert {stage.image for stage in stages} == {RUNTIME_IMAGE, "ghcr.io/astral-sh/uv:0.13.9"}
    assert "/usr/local/" not in text, "the official image's file layout"
    builder_env = " ".join(next(s for s in stages if s.name == "builder").args("ENV"))
    assert "UV_PYTHON=python3" in builder_env


def test_api_image_listens_where_the_settings_say() -> None:
    runtime = parse(DOCKERFILES["api"])[-1]
    env = " ".join(runtime.args("ENV"))
    assert "API_BIND_ADDRESS=0.0.0.0" in env
    assert "API_PORT=8000" in env
    assert runtime.args("EXPOSE") == ["8000"]


def test_api_image_carries_alembic_ini_for_migrations() -> None:
    runtime = parse(DOCKERFILES["api"])[-1]
    assert "alembic.ini /app/alembic.ini" in runtime.args("COPY")
    assert runtime.args("WORKDIR") == ["/app"], "`alembic upgrade head` runs from /app"
    assert "script_location = shared:migrations" in (REPO / "alembic.ini").read_text()


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything is excluded unless named"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "alembic.ini", "shared", "api", "worker"}
    assert {"**/.venv", "**/__pycache__", "**/.env"} <= set(lines)
