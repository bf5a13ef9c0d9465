"""One maintenance core, run the way a worker child would run it, in a process of its own so
that the process's peak RSS belongs to the job: `python -m bench.maintenance_task deactivate`
or `... prune`, with DATABASE_URL pointing at the copy to work on.

Prints one JSON line: the rows the core reports, its wall-clock seconds (connection included,
interpreter start-up and imports excluded) and the process's peak RSS (ru_maxrss).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from shared.contracts import NoArgs, PruneLogsArgs
from worker.celery_app import get_task_session, run_async
from worker.maintenance.tasks import prune_logs
from worker.users.tasks import deactivate_inactive_users


async def _deactivate() -> int:
    async with get_task_session() as db:
        return await deactivate_inactive_users(NoArgs(), db)


async def _prune() -> int:
    async with get_task_session() as db:
        return await prune_logs(PruneLogsArgs(days=30), db)


JOBS: dict[str, Callable[[], Coroutine[Any, Any, int]]] = {
    "deactivate": _deactivate,
    "prune": _prune,
}


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in JOBS:
        raise SystemExit(f"usage: python -m bench.maintenance_task {{{','.join(JOBS)}}}")
    start = time.perf_counter()
    rows = run_async(JOBS[sys.argv[1]]())  # the worker child's loop and pool, as in production
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak_kib / 1024}))


if __name__ == "__main__":
    main()
