"""A worker refuses to start on a database schema it was not written for."""

from __future__ import annotations

import asyncio

from celery.signals import worker_init

from shared.db import make_engine
from shared.schema import SchemaNotCurrentError, ensure_schema_current


def _refuse_an_unknown_schema(**_: object) -> None:
    """In the main process, before the pool forks (the check's engine is gone by then): a worker
    on a schema it was not written for would fail every task. An unreachable database is not a
    reason to refuse: tasks retry until it answers."""

    async def check() -> None:
        engine = make_engine("worker", pool_size=None)
        try:
            await ensure_schema_current(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except SchemaNotCurrentError as exc:
        # SystemExit, because Celery logs and swallows a receiver's ordinary exceptions.
        raise SystemExit(f"the worker refuses to start: {exc}") from None


def install() -> None:
    worker_init.connect(_refuse_an_unknown_schema, weak=False)
