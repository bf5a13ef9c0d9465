"""What routes depend on: the database session and the app's long-lived resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.publisher import Publisher
from shared.broker import Broker


@dataclass
class Resources:
    """Built once per process in the lifespan (never at import time), closed at shutdown."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    broker: Broker
    publisher: Publisher


async def get_resources(request: Request) -> Resources:
    # async, though it awaits nothing: FastAPI runs a plain `def` dependency in a thread pool,
    # a hop that costs more than everything this does.
    resources: Resources = request.app.state.resources
    return resources


async def get_db(
    resources: Annotated[Resources, Depends(get_resources)],
) -> AsyncIterator[AsyncSession]:
    """A session per request. Services commit explicitly: a commit here, after the response,
    could fail after the client was told it succeeded."""
    session = resources.sessions()
    try:
        yield session
    finally:
        try:
            await session.close()
        except (SQLAlchemyError, OSError):
            # The database went away during the request, whose answer (a 503 when that was
            # the cause) has already gone out: failing here would drop the client's connection
            # instead. The connection is dead; discard it rather than return it to the pool.
            await session.invalidate()


DbSession = Annotated[AsyncSession, Depends(get_db)]
AppResources = Annotated[Resources, Depends(get_resources)]
