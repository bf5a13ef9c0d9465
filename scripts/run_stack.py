"""`make run`: the whole stack in the foreground, with readable interleaved logs.

Starts the API (uvicorn), both kinds of worker (worker.kinds: `concurrent` on the `default`
queue, `prefork` on `maintenance`), one beat and, unless SMTP_HOST is set, a local SMTP sink
that prints the mail it receives. Each child runs in its own process group, so Ctrl-C or SIGTERM
reaches this supervisor only, which stops the children in order: SIGTERM, a few seconds of
grace, then SIGKILL to whatever is left of each group; then it removes its temporary folder.

The two workers share this host, so nothing of theirs may collide: each has its WORKER_NAME
(its heartbeat files in HEARTBEAT_DIR), its metrics port (WORKER_METRICS_PORT for the concurrent
one, PREFORK_METRICS_PORT for the prefork one) and a multiprocess metrics folder of its own
under this run's temporary folder. A second stack beside this one needs another API_PORT, other
metrics ports and another HEARTBEAT_DIR (README, "Two stacks on one machine").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from shared.settings import settings
from worker.kinds import CONCURRENT, KINDS, PREFORK, WorkerKind
from worker.probe import BEAT_HEARTBEAT, heartbeat_file, ready_file

GRACE_SECONDS = 7.0
COLORS = {"api": 36, CONCURRENT.name: 33, PREFORK.name: 34, "beat": 35, "smtp": 32}


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def metrics_port(kind: WorkerKind) -> int:
    return settings.prefork_metrics_port if kind is PREFORK else settings.worker_metrics_port


def commands() -> dict[str, list[str]]:
    python = sys.executable
    stack = {
        "api": [
            python, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(settings.api_port), "--no-access-log",
        ],
        **{kind.name: kind.command((python, "-m", "celery")) for kind in KINDS},
        "beat": [python, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"],
    }  # fmt: skip
    if "SMTP_HOST" not in os.environ:
        stack["smtp"] = [
            python, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Debugging",
            "-l", f"{settings.smtp_host}:{settings.smtp_port}",
        ]  # fmt: skip
    return stack


def environments(metrics_root: str) -> dict[str, dict[str, str]]:
    """Each worker's own name, metrics port and multiprocess metrics folder."""
    return {
        kind.name: {
            **os.environ,
            "WORKER_NAME": kind.name,
            "WORKER_METRICS_PORT": str(metrics_port(kind)),
            "PROMETHEUS_MULTIPROC_DIR": os.path.join(metrics_root, kind.name),
        }
        for kind in KINDS
    }


def pump(name: str, stream: IO[bytes]) -> None:
    prefix = f"\033[{COLORS.get(name, 37)}m{name:>10} |\033[0m " if sys.stdout.isatty() else ""
    prefix = prefix or f"{name:>10} | "
    for line in iter(stream.readline, b""):
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


def start(name: str, argv: list[str], env: dict[str, str]) -> Child:
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    assert process.stdout is not None
    threading.Thread(target=pump, args=(name, process.stdout), daemon=True).start()
    return Child(name, process)


def stop(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[run] {child.name} did not stop in time: killing it", flush=True)
    for child in children:
        with contextlib.suppress(ProcessLookupError):  # the group: a worker's children too
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()


def main() -> int:
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # Each worker's pool children write their metrics in its folder here, for its main process
    # to serve; removed when the stack stops.
    metrics_root = tempfile.mkdtemp(prefix="backend-run-")
    try:
        return supervise(stopping, environments(metrics_root))
    finally:
        shutil.rmtree(metrics_root, ignore_errors=True)


def supervise(stopping: threading.Event, worker_envs: dict[str, dict[str, str]]) -> int:
    children: list[Child] = []
    try:
        for name, argv in commands().items():
            children.append(start(name, argv, worker_envs.get(name, dict(os.environ))))
        announce()
        while not stopping.wait(0.5):
            exited = [child for child in children if child.process.poll() is not None]
            if exited:
                child = exited[0]
                print(f"[run] {child.name} exited with {child.process.returncode}", flush=True)
                return 1
        return 0
    finally:
        print("[run] stopping", flush=True)
        stop(children)
        forget_probe_files()


def forget_probe_files() -> None:
    """The heartbeat and ready files of the workers and beat this stack ran, once they stopped:
    a stopped stack leaves nothing in HEARTBEAT_DIR (by default the temporary directory)."""
    names = [BEAT_HEARTBEAT]
    for kind in KINDS:
        names += [heartbeat_file(kind.name), ready_file(kind.name)]
    for name in names:
        (Path(settings.heartbeat_dir) / name).unlink(missing_ok=True)


def announce() -> None:
    base = f"http://127.0.0.1:{settings.api_port}"
    print(
        f"[run] API {base}  docs {base}/docs  health {base}/healthz\n"
        f"[run] metrics: {CONCURRENT.name} worker :{settings.worker_metrics_port}"
        f"  {PREFORK.name} worker :{settings.prefork_metrics_port}"
        f"  beat :{settings.beat_metrics_port}  (on {settings.metrics_bind_address})\n"
        f"[run] admin token: {settings.admin_token.get_secret_value()}"
        f"  client token: {settings.api_tokens[0].get_secret_value()}"
        if settings.environment == "development"
        else f"[run] API {base}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
