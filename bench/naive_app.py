"""The baseline bench.api compares the product's `POST /users` with: what the common FastAPI +
Celery templates do. Insert the user, commit, then publish with Celery's blocking `send_task`
inside the async endpoint, with no outbox row.

Only bench.api runs it (`uvicorn bench.naive_app:create_app --factory`); the product and the
tests never import it. It reads DATABASE_URL, REDIS_URL, DB_POOL_SIZE and DB_MAX_OVERFLOW
through the product's settings and builds its engine with `shared.db.make_engine`, with the API's
pool and pre-ping, so the two sides differ only in how they hand the task over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, FastAPI, Request, status
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.users.schemas import UserCreateIn, UserOut
from shared.db import make_engine, make_sessionmaker
from shared.models import User
from shared.settings import settings

WELCOME_TASK = "users.send_welcome_email"
# The queue the product's worker consumes: a naive message is one the real worker would run.
QUEUE = "default"


def make_celery(broker_url: str) -> Celery:
    """A producer-only Celery app, the way templates configure one (no worker code imported)."""
    celery = Celery("naive", broker=broker_url)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_ignore_result=True,
    )
    return celery


@dataclass
class NaiveResources:
    sessions: async_sessionmaker[AsyncSession]
    celery: Celery


def get_resources(request: Request) -> NaiveResources:
    resources: NaiveResources = request.app.state.naive
    return resources


async def get_db(
    resources: Annotated[NaiveResources, Depends(get_resources)],
) -> AsyncIterator[AsyncSession]:
    async with resources.sessions() as session:
        yield session


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = make_engine(
        "bench",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pre_ping=True,
    )
    celery = make_celery(settings.redis_url.get_secret_value())
    app.state.naive = NaiveResources(make_sessionmaker(engine), celery)
    try:
        yield
    finally:
        celery.close()
        await engine.dispose()


def create_app() -> FastAPI:
    app = FastAPI(title="Naive baseline (bench only)", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/users", status_code=status.HTTP_201_CREATED)
    async def create_user(
        body: UserCreateIn,
        db: Annotated[AsyncSession, Depends(get_db)],
        resources: Annotated[NaiveResources, Depends(get_resources)],
    ) -> UserOut:
        user = User(email=body.email, full_name=body.full_name)
        db.add(user)
        await db.commit()
        # The templates' way: a synchronous publish on the event loop, after the commit. While
        # it waits for Redis, no other request on this process makes progress; and a broker
        # failure here loses the email of a user who is already committed.
        resources.celery.send_task(WELCOME_TASK, kwargs={"user_id": user.id})
        return UserOut.model_validate(user)

    return app
