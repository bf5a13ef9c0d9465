"""The API application: `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import health
from api.deps import Resources
from api.errors import add_exception_handlers
from api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from api.publisher import Publisher
from api.tasks.routes import router as tasks_router
from api.users.routes import router as users_router
from shared.broker import Broker, connect_redis
from shared.db import make_engine, make_sessionmaker
from shared.logs import configure_logging
from shared.runs.enqueue import publish_on_commit
from shared.schema import ensure_schema_current
from shared.settings import settings

SHUTDOWN_PUBLISH_SECONDS = 2.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = make_engine(
        "api", pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow, pre_ping=True
    )
    await ensure_schema_current(engine)
    sessions = make_sessionmaker(engine)
    redis = connect_redis(settings.redis_url.get_secret_value(), settings.publish_timeout)
    broker = Broker(redis, settings.publish_timeout)
    publisher = Publisher(broker, sessions)
    publisher.start()
    # Every run a service enqueues is handed to the publisher once its transaction commits.
    publish_on_commit(sessions, publisher.submit)
    app.state.resources = Resources(engine, sessions, redis, broker, publisher)
    # Everything made so far lives as long as the process: keep the collector from walking it
    # again on every full collection, which shows up as tail latency under load.
    gc.freeze()
    try:
        yield
    finally:
        await publisher.close(SHUTDOWN_PUBLISH_SECONDS)
        await redis.aclose()
        await engine.dispose()


def create_app() -> FastAPI:
    configure_logging(settings.log_level, settings.effective_log_format)
    app = FastAPI(
        title="Backend API",
        version="0.1.0",
        description="Users, and the background tasks that serve them.",
        lifespan=lifespan,
    )
    add_exception_handlers(app)
    app.include_router(health.router)
    app.include_router(users_router)
    app.include_router(tasks_router)
    # Outermost last: the request id exists before anything logs or measures.
    documentation = (
        app.openapi_url,
        app.docs_url,
        app.redoc_url,
        app.swagger_ui_oauth2_redirect_url,
    )
    app.add_middleware(
        MetricsMiddleware, documentation_paths=frozenset(p for p in documentation if p)
    )
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
