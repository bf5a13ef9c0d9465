"""`make run` (scripts/run_stack.py) as a user runs it: both kinds of worker, each taking its
own queue; Ctrl-C stops everything; two stacks side by side on one machine."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.fixtures.api import ADMIN, CLIENT
from tests.fixtures.ports import free_port
from tests.fixtures.processes import FAST_RELAY, Proc, Processes, answers, run_probe
from tests.fixtures.smtp import Mailbox, smtp_env
from tests.fixtures.waiting import wait_until
from worker.kinds import CONCURRENT, KINDS, PREFORK

STARTUP_SECONDS = 60
# What start_stack gives each stack a value of its own for (SMTP_PORT: the two-stack test).
SECOND_STACK_SETTINGS = (
    "API_PORT", "WORKER_METRICS_PORT", "PREFORK_METRICS_PORT", "BEAT_METRICS_PORT",
    "HEARTBEAT_DIR", "SMTP_PORT",
)  # fmt: skip


@dataclass
class Stack:
    proc: Proc
    base: str
    heartbeat_dir: Path
    temp_dir: Path
    metrics_ports: dict[str, int]

    def probe(self, name: str, *args: str) -> int:
        return run_probe("worker", self.heartbeat_dir, 30, "--name", name, *args)

    def all_ready(self) -> bool:
        return all(self.probe(kind.name, "--ready") == 0 for kind in KINDS)

    def metrics(self, name: str) -> str:
        url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        return httpx.get(url, timeout=5).text

    def lines_of(self, name: str) -> list[dict[str, object]]:
        """The JSON log lines one child wrote, by the prefix the supervisor gives them."""
        prefix = f"{name:>10} | "
        found = []
        for raw in self.proc.output().splitlines():
            if raw.startswith(prefix):
                try:
                    line = json.loads(raw[len(prefix) :])
                except ValueError:
                    continue
                if isinstance(line, dict):
                    found.append(line)
        return found

    def finished_by(self, name: str, task_id: object) -> bool:
        return any(
            line.get("message") == "task finished"
            and line.get("task_id") == task_id
            and line.get("outcome") == "succeeded"
            for line in self.lines_of(name)
        )


def start_stack(processes: Processes, tmp_path: Path, label: str, **env: str) -> Stack:
    """`make run`'s script with its own API port, metrics ports, heartbeat and temp folders."""
    heartbeat_dir, temp_dir = tmp_path / f"{label}-heartbeats", tmp_path / f"{label}-tmp"
    heartbeat_dir.mkdir()
    temp_dir.mkdir()
    # SMTP_PORT is the caller's: a mail server of the test's, or a sink of the stack's own.
    ports = {
        s: free_port() for s in SECOND_STACK_SETTINGS if s.endswith("_PORT") and s != "SMTP_PORT"
    }
    proc = processes.start(
        label,
        [sys.executable, "scripts/run_stack.py"],
        **{key: str(port) for key, port in ports.items()},
        HEARTBEAT_DIR=str(heartbeat_dir),
        TMPDIR=str(temp_dir),
        **FAST_RELAY,
        **env,
    )
    stack = Stack(
        proc,
        f"http://127.0.0.1:{ports['API_PORT']}",
        heartbeat_dir,
        temp_dir,
        {
            CONCURRENT.name: ports["WORKER_METRICS_PORT"],
            PREFORK.name: ports["PREFORK_METRICS_PORT"],
        },
    )
    proc.wait_for_output("[run] API", STARTUP_SECONDS)
    wait_until(lambda: answers(f"{stack.base}/healthz"), STARTUP_SECONDS, "the API")
    wait_until(stack.all_ready, STARTUP_SECONDS, f"both workers of {label} to be ready")
    return stack


def interrupt(stack: Stack) -> list[psutil.Process]:
    """Ctrl-C as a terminal sends it (SIGINT to the foreground process group); returns the
    processes the stack had started, for the caller to check that none is left."""
    supervisor = psutil.Process(stack.proc.popen.pid)
    started = supervisor.children(recursive=True)
    assert len(started) >= 5, started  # api, two workers (and their pools), beat, ...
    stack.proc.signal(signal.SIGINT)
    assert stack.proc.popen.wait(timeout=30) == 0, stack.proc.output()[-3000:]
    return started


def test_make_run_routes_each_queue_to_its_kind_and_ctrl_c_stops_everything(
    processes: Processes, tmp_path: Path, smtp_server: Mailbox
) -> None:
    stack = start_stack(processes, tmp_path, "stack", **smtp_env(smtp_server))
    with httpx.Client(base_url=stack.base, timeout=10) as http:
        user = http.post(
            "/users", json={"email": "kinds@example.com", "full_name": "K"}, headers=CLIENT
        )
        assert user.status_code == 201, user.text
        prune = http.post(
            "/tasks", json={"name": "maintenance.prune_logs", "kwargs": {"days": 7}}, headers=ADMIN
        )
        assert prune.status_code == 202, prune.text
    welcome_id, prune_id = user.json()["welcome_run_id"], prune.json()["id"]

    smtp_server.wait_for(1)
    wait_until(
        lambda: stack.finished_by(CONCURRENT.name, welcome_id), 30, "the email, by concurrent"
    )
    wait_until(lambda: stack.finished_by(PREFORK.name, prune_id), 30, "the prune, by prefork")
    assert not stack.finished_by(PREFORK.name, welcome_id)
    assert not stack.finished_by(CONCURRENT.name, prune_id)
    assert len(smtp_server.to("kinds@example.com")) == 1

    # Each worker serves its own metrics on its own port: its name, and only its own runs.
    concurrent, prefork = stack.metrics(CONCURRENT.name), stack.metrics(PREFORK.name)
    assert 'worker_runs_in_flight{worker="concurrent"}' in concurrent
    assert 'worker_runs_in_flight{worker="prefork"}' in prefork
    assert 'worker_tasks_succeeded_total{task="users.send_welcome_email"} 1.0' in concurrent
    assert 'task="users.send_welcome_email"' not in prefork
    assert 'worker_tasks_succeeded_total{task="maintenance.prune_logs"} 1.0' in prefork
    assert 'task="maintenance.prune_logs"' not in concurrent
    # One multiprocess metrics folder per worker, in the stack's temporary folder.
    run_folders = list(stack.temp_dir.glob("backend-run-*"))
    assert len(run_folders) == 1, list(stack.temp_dir.iterdir())
    [run_folder] = run_folders
    assert sorted(path.name for path in run_folder.iterdir()) == sorted(k.name for k in KINDS)

    started = interrupt(stack)
    _, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left running after Ctrl-C: {alive}"
    assert not run_folder.exists(), "the temporary folder outlived the stack"
    assert list(stack.temp_dir.iterdir()) == [], "the stack left files in TMPDIR"
    assert list(stack.heartbeat_dir.iterdir()) == [], "the stack left its probes' files"
    for kind in KINDS:
        assert stack.probe(kind.name, "--ready") == 1, f"{kind.name} still reports ready"


def test_two_stacks_side_by_side_each_probe_reports_its_own_workers(
    processes: Processes, tmp_path: Path
) -> None:
    # The second stack has its own Redis, so neither consumes the other's runs; each starts its
    # own mail sink on its own port (no SMTP_HOST set).
    _, redis_port = processes.redis_server()
    first = start_stack(processes, tmp_path, "first", SMTP_PORT=str(free_port()))
    second = start_stack(
        processes,
        tmp_path,
        "second",
        SMTP_PORT=str(free_port()),
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
    )
    for stack in (first, second):
        assert stack.all_ready()
        for kind in KINDS:
            assert f'worker="{kind.name}"' in stack.metrics(kind.name)

    started = interrupt(first)
    _, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left running after Ctrl-C: {alive}"
    for kind in KINDS:
        assert first.probe(kind.name, "--ready") == 1, f"stopped {kind.name} still ready"
        assert second.probe(kind.name, "--ready") == 0, f"the other stack's {kind.name} is down"
    assert second.proc.popen.poll() is None
    assert answers(f"{second.base}/healthz")


def test_the_readme_names_every_setting_a_second_stack_changes() -> None:
    """What the side-by-side test changes for its second stack, the README tells users to."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Two stacks on one machine", 1)[1].split("\n## ", 1)[0]
    for setting in (*SECOND_STACK_SETTINGS, "REDIS_URL", "DATABASE_URL"):
        assert f"`{setting}`" in section, setting
