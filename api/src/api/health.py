"""Liveness, readiness and metrics: no token, cheap, and bounded in time."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import AppResources
from shared.models import TaskRun

router = APIRouter(tags=["health"])

CHECK_TIMEOUT = 1.0

OUTBOX_BACKLOG = Gauge("outbox_unpublished_runs", "Task runs committed but not yet published")
OUTBOX_OLDEST = Gauge(
    "outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished task run"
)


class Readiness(BaseModel):
    status: str
    database: str
    broker: str


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "PostgreSQL does not answer"}},
)
async def readyz(resources: AppResources, response: Response) -> Readiness:
    """Ready when PostgreSQL answers. A broker outage is reported but keeps the API ready:
    the outbox still accepts work, so leaving the Service would only turn a degraded state
    into an outage."""
    database = "up" if await _database_answers(resources) else "down"
    broker = "up" if await resources.broker.ping() else "down"
    if database == "down":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="ready" if database == "up" else "unready", database=database, broker=broker
    )


async def _database_answers(resources: AppResources) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), resources.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError):
        return False
    return True


@router.get("/metrics", response_class=Response)
async def metrics(resources: AppResources) -> Response:
    """Prometheus text format."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), resources.sessions() as db:
            backlog, oldest = (
                await db.execute(
                    select(
                        func.count(),
                        func.extract("epoch", func.now() - func.min(TaskRun.created_at)),
                    ).where(TaskRun.published_at.is_(None))
                )
            ).one()
        OUTBOX_BACKLOG.set(backlog)
        OUTBOX_OLDEST.set(float(oldest or 0))
    except (SQLAlchemyError, OSError, TimeoutError):
        pass  # the gauges keep their last values; /readyz reports the outage
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
