"""A process a benchmark starts (uvicorn, a worker): in a group of its own, its output in a
file, stopped with SIGTERM and then SIGKILL to the whole group (a prefork worker's children)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class BenchProcess:
    def __init__(self, what: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.what = what
        self.log = log
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.what} exited ({self.popen.returncode}):\n{tail}")

    def stop(self, grace: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
