"""compose.yaml: valid for Compose v2 (with and without the monitoring profile), and shaped as
the issue asks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import COMPOSE_FILE, compose_binary, output, run
from worker.kinds import KINDS

HARD_TIME_LIMIT_SECONDS = 360  # TASK_TIME_LIMIT
DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def seconds(duration: str | int | float) -> float:
    """A Compose duration ("6m30s", "400s", 390) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = DURATION.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a Compose duration: {duration!r}")
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)


def compose(*args: str, file: Path = COMPOSE_FILE) -> list[str]:
    return [compose_binary(), "--file", str(file), "--project-directory", str(file.parent), *args]


def rendered(*profiles: str) -> dict[str, Any]:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = run([*compose(*flags, "config", "--format", "json")], cwd=COMPOSE_FILE.parent)
    assert result.returncode == 0, output(result)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.mark.parametrize("profiles", [[], ["monitoring"]], ids=["default", "monitoring"])
def test_compose_config_is_valid(profiles: list[str]) -> None:
    flags = [flag for profile in profiles for flag in ("--profile", profile)]
    result = run(compose(*flags, "config", "--quiet"), cwd=COMPOSE_FILE.parent)
    assert result.returncode == 0, output(result)


def test_compose_config_fails_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        "services:\n"
        "  api:\n"
        "    image: example/api:1\n"
        "    depends_on:\n"
        "      migrate:\n"
        "        condition: service_completed_successfully\n"
    )
    result = run(compose("config", "--quiet", file=broken), cwd=tmp_path)
    assert result.returncode != 0, output(result)
    assert "migrate" in result.stderr


def test_services(raw: dict[str, Any]) -> None:
    assert set(raw["services"]) == {
        "postgres", "redis", "mailpit", "migrate", "api", "worker-concurrent", "worker-prefork",
        "beat", "flower",
    }  # fmt: skip


def test_each_kind_of_worker_runs_its_own_command_name_and_probe(raw: dict[str, Any]) -> None:
    services = raw["services"]
    for kind in KINDS:
        worker = services[f"worker-{kind.name}"]
        assert worker["command"] == kind.command()
        assert worker["environment"]["WORKER_NAME"] == kind.name
        assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.probe", "worker"]
        assert worker["image"] == services["beat"]["image"]
        assert worker["restart"] == "unless-stopped"
    queues = [services[f"worker-{kind.name}"]["command"] for kind in KINDS]
    consumed = [q for command in queues for q in command[command.index("-Q") + 1].split(",")]
    assert sorted(consumed) == ["default", "maintenance"], "every queue, by exactly one kind"


def test_postgres_and_redis_are_healthchecked_on_named_volumes(raw: dict[str, Any]) -> None:
    services = raw["services"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has a healthcheck"
        volume = services[name]["volumes"][0].split(":")[0]
        assert volume in raw["volumes"], f"{name} keeps its data in a named volume"
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_migrate_runs_alembic_once_before_the_api(raw: dict[str, Any]) -> None:
    services = raw["services"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["image"] == services["api"]["image"], "migrations ship in api"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    condition = services["api"]["depends_on"]["migrate"]["condition"]
    assert condition == "service_completed_successfully"
    assert "8000" in services["api"]["ports"][0]


def test_beat_is_a_single_instance(raw: dict[str, Any]) -> None:
    beat = raw["services"]["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert "scale" not in beat
    assert beat["command"] == ["celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"]
    assert beat["image"] == raw["services"]["worker-concurrent"]["image"], "the worker image"


@pytest.mark.parametrize("kind", [kind.name for kind in KINDS])
def test_worker_outlives_its_hard_time_limit_on_stop(raw: dict[str, Any], kind: str) -> None:
    worker = raw["services"][f"worker-{kind}"]
    assert seconds(worker["stop_grace_period"]) > HARD_TIME_LIMIT_SECONDS
    assert worker["environment"]["TASK_TIME_LIMIT"] == str(HARD_TIME_LIMIT_SECONDS)


def test_every_service_has_a_healthcheck_or_runs_once(raw: dict[str, Any]) -> None:
    services = raw["services"]
    for name in ("postgres", "redis", "api", "worker-concurrent", "worker-prefork", "beat"):
        assert services[name]["healthcheck"]["test"], f"{name} has a healthcheck"


def test_app_services_share_one_environment_block(raw: dict[str, Any]) -> None:
    services = raw["services"]
    environments = [services[name]["environment"] for name in ("migrate", "api", "beat")]
    assert all(env is environments[0] for env in environments), "one YAML anchor, not copies"
    env = environments[0]
    # Each worker merges the same block and adds only its name and its metrics directory.
    for kind in KINDS:
        worker_env = services[f"worker-{kind.name}"]["environment"]
        own = {"WORKER_NAME", "PROMETHEUS_MULTIPROC_DIR"}
        assert {k: v for k, v in worker_env.items() if k not in own} == env
    assert env["ENVIRONMENT"] == "development"
    assert env["SMTP_HOST"] == "mailpit"
    assert env["SMTP_PORT"] == "1025"
    assert "x-app-environment" in raw


def test_mail_sink_is_mailpit() -> None:
    mailpit = rendered()["services"]["mailpit"]
    assert mailpit["image"].startswith("axllent/mailpit:")
    assert {port["target"] for port in mailpit["ports"]} == {1025, 8025}


def test_flower_runs_only_with_the_monitoring_profile(raw: dict[str, Any]) -> None:
    assert raw["services"]["flower"]["profiles"] == ["monitoring"]
    for name, service in raw["services"].items():
        if name != "flower":
            assert "profiles" not in service, f"{name} must start without a profile"
    assert "flower" not in rendered()["services"]
    flower = rendered("monitoring")["services"]["flower"]
    assert "flower" in flower["command"]
    assert any(arg.startswith("--broker=redis://redis:6379") for arg in flower["command"])
    assert flower["ports"][0]["target"] == 5555


def test_duration_parser() -> None:
    assert seconds("6m30s") == 390
    assert seconds("400s") == 400
    assert seconds(390) == 390
    with pytest.raises(ValueError, match="not a Compose duration"):
        seconds("six minutes")


HOST_NETWORK = COMPOSE_FILE.parent / "deploy" / "compose" / "host-network.yaml"
LOOPBACK = "127.0.0.1"


def test_healthchecks_ask_their_own_service(raw: dict[str, Any]) -> None:
    """On a host network, 127.0.0.1:6379 (or :8000) may be another stack's: each check reaches
    its own server through its socket, or asks the port its service was configured with."""
    services = raw["services"]
    redis = services["redis"]
    socket = redis["command"][redis["command"].index("--unixsocket") + 1]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "-s", socket, "ping"]
    assert "--host=/var/run/postgresql" in services["postgres"]["healthcheck"]["test"]
    assert services["api"]["healthcheck"]["test"] == ["CMD", "python", "-m", "api.probe", "readyz"]
    assert services["mailpit"]["healthcheck"]["test"] == ["CMD", "/mailpit", "readyz"]


def host_network_config() -> dict[str, Any]:
    result = run(
        [compose_binary(), "--file", str(COMPOSE_FILE), "--file", str(HOST_NETWORK),
         "--project-directory", str(COMPOSE_FILE.parent), "config", "--format", "json"],
        cwd=COMPOSE_FILE.parent,
    )  # fmt: skip
    assert result.returncode == 0, output(result)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_host_network_override_keeps_every_service_on_loopback_ports_of_its_own() -> None:
    base, merged = rendered()["services"], host_network_config()["services"]
    assert set(merged) == set(base), "the override adds no service and drops none"
    ports: list[str] = []
    for name, service in merged.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports"), f"{name} publishes nothing on a host network"
        env = service.get("environment") or {}
        for key in ("API_BIND_ADDRESS", "METRICS_BIND_ADDRESS", "SMTP_HOST", "SINK_HOST"):
            if key in env:
                assert env[key] == LOOPBACK, f"{name} {key}"
        if "DATABASE_URL" in env:
            assert f"@{LOOPBACK}:" in env["DATABASE_URL"]
            assert env["REDIS_URL"].startswith(f"redis://{LOOPBACK}:")
        if name.startswith("worker-"):
            ports.append(env["WORKER_METRICS_PORT"])
    assert len(set(ports)) == len(ports), "two workers on one host need two metrics ports"
    redis_command = merged["redis"]["command"]
    assert redis_command[redis_command.index("--bind") + 1] == LOOPBACK


def test_host_network_override_keeps_the_healthchecks_of_compose_yaml() -> None:
    base, merged = rendered()["services"], host_network_config()["services"]
    for name, service in base.items():
        if name == "mailpit":  # the stand-in sink is not Mailpit: its own check, same idea
            assert merged[name]["healthcheck"]["test"][-1] == "--check"
        elif "healthcheck" in service:
            assert merged[name]["healthcheck"]["test"] == service["healthcheck"]["test"], name


def test_the_smoke_test_runs_the_documented_commands_that_compose_runs(raw: dict[str, Any]) -> None:
    """`make smoke-images` reads its commands from the table in docs/deploy.md: the same
    commands (and WORKER_NAME) as compose.yaml, the api's being its image's command."""
    from scripts.containers.smoke import documented_processes

    documented = {process.name: process for process in documented_processes()}
    assert {"api", "migrate", "beat"} <= set(documented)
    assert documented["api"].argv == ["python", "-m", "api.serve"]
    assert "command" not in raw["services"]["api"], "compose runs the api image's own command"
    for name, process in documented.items():
        if name == "api" or name not in raw["services"]:
            continue
        service = raw["services"][name]
        assert service["command"] == process.argv, name
        for key, value in process.env.items():
            assert service["environment"][key] == value, f"{name} {key}"
