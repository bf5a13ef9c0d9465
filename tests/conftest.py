"""Fixtures live in tests/fixtures/<topic>.py; this file only makes them visible everywhere.
tests/environment.py (loaded by `-p tests.environment`) has already pointed settings at this
worker's test databases."""

from tests.fixtures.database import db, e2e_database, e2e_engine, test_database, test_engine
from tests.fixtures.redis import e2e_redis, redis

__all__ = ["db", "e2e_database", "e2e_engine", "e2e_redis", "redis", "test_database", "test_engine"]
