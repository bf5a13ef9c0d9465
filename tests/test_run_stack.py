"""`make run`'s supervisor: Ctrl-C stops every process it started and leaves no file behind."""

import signal
import sys
from pathlib import Path

import httpx
import psutil

from tests.fixtures.ports import free_port
from tests.fixtures.processes import Processes
from tests.fixtures.waiting import wait_until


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_ctrl_c_stops_the_whole_stack_and_leaves_no_temporary_folder(
    processes: Processes, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    api_port = free_port()
    stack = processes.start(
        "run_stack",
        [sys.executable, "scripts/run_stack.py"],
        TMPDIR=str(tmp),
        API_PORT=str(api_port),
        WORKER_METRICS_PORT=str(free_port()),
        BEAT_METRICS_PORT=str(free_port()),
        SMTP_PORT=str(free_port()),  # SMTP_HOST unset: the stack starts its own sink there
    )
    wait_until(lambda: answers(f"http://127.0.0.1:{api_port}/healthz"), 60, "the API")
    stack.wait_for_output("beat: Starting...", timeout=60)
    stack.wait_for_output(" ready.", timeout=60)
    started = psutil.Process(stack.popen.pid).children(recursive=True)
    assert len(started) >= 5  # api, worker and its pool, beat, the SMTP sink
    assert [entry.name for entry in tmp.iterdir()] != []  # the worker's metrics folder

    stack.signal(signal.SIGINT)  # what Ctrl-C in the terminal sends it
    wait_until(lambda: stack.popen.poll() is not None, 30, "the stack to stop")

    assert stack.popen.returncode == 0, stack.output()[-3000:]
    assert not [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert list(tmp.iterdir()) == []
