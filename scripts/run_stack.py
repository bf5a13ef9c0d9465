"""`make run`: the whole stack in the foreground, with readable interleaved logs.

Starts the API (uvicorn), one worker consuming every queue, one beat and, unless SMTP_HOST is
set, a local SMTP sink that prints the mail it receives. Each child runs in its own process
group, so Ctrl-C or SIGTERM reaches this supervisor only, which stops the children in order:
SIGTERM, a few seconds of grace, then SIGKILL to whatever is left of each group.
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
from types import FrameType
from typing import IO

from shared.settings import settings

GRACE_SECONDS = 7.0
COLORS = {"api": 36, "worker": 33, "beat": 35, "smtp": 32}


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def commands() -> dict[str, list[str]]:
    python = sys.executable
    stack = {
        "api": [
            python, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(settings.api_port), "--no-access-log",
        ],
        "worker": [
            python, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-P", "prefork", "-c", "2", "-Q", "default,maintenance", "--loglevel", "INFO",
        ],
        "beat": [python, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"],
    }  # fmt: skip
    if "SMTP_HOST" not in os.environ:
        stack["smtp"] = [
            python, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Debugging",
            "-l", f"{settings.smtp_host}:{settings.smtp_port}",
        ]  # fmt: skip
    return stack


def pump(name: str, stream: IO[bytes]) -> None:
    prefix = f"\033[{COLORS.get(name, 37)}m{name:>6} |\033[0m " if sys.stdout.isatty() else ""
    prefix = prefix or f"{name:>6} | "
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

    # The worker's pool children write their metrics here for its main process to serve;
    # removed once the stack stopped (Ctrl-C and SIGTERM included): no run leaves it behind.
    metrics_dir = tempfile.mkdtemp(prefix="worker-metrics-")
    worker_env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    children = [
        start(name, argv, worker_env if name == "worker" else dict(os.environ))
        for name, argv in commands().items()
    ]
    base = f"http://127.0.0.1:{settings.api_port}"
    print(
        f"[run] API {base}  docs {base}/docs  health {base}/healthz\n"
        f"[run] metrics: worker :{settings.worker_metrics_port}"
        f"  beat :{settings.beat_metrics_port}\n"
        f"[run] admin token: {settings.admin_token.get_secret_value()}"
        f"  client token: {settings.api_tokens[0].get_secret_value()}"
        if settings.environment == "development"
        else f"[run] API {base}",
        flush=True,
    )
    exit_code = 0
    while not stopping.wait(0.5):
        exited = [child for child in children if child.process.poll() is not None]
        if exited:
            print(f"[run] {exited[0].name} exited with {exited[0].process.returncode}", flush=True)
            exit_code = 1
            break
    print("[run] stopping", flush=True)
    stop(children)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
