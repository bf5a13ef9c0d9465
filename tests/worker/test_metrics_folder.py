"""A worker's start clears its multiprocess metrics folder of earlier runs, and never deletes
the files of another live worker (it refuses to start instead)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.metrics import MULTIPROCESS_DIR, SharedMetricsFolderError, forget_previous_run


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    return tmp_path


@pytest.fixture
def other_process() -> Iterator[int]:
    """A live process that is not this one, as another worker would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_files_of_dead_processes_and_of_this_one_are_cleared(folder: Path) -> None:
    stale = [folder / f"counter_{dead_pid()}.db", folder / f"histogram_{os.getpid()}.db"]
    for path in stale:
        path.write_bytes(b"x")
    forget_previous_run()
    assert not list(folder.iterdir())


def test_files_of_another_live_process_are_kept_and_the_start_refused(
    folder: Path, other_process: int
) -> None:
    theirs = folder / f"counter_{other_process}.db"
    theirs.write_bytes(b"x")
    ours = folder / f"counter_{dead_pid()}.db"
    ours.write_bytes(b"x")
    with pytest.raises(SharedMetricsFolderError, match=str(other_process)):
        forget_previous_run()
    assert theirs.exists()
    assert ours.exists(), "nothing is deleted when the start is refused"
