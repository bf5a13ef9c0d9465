"""Fixtures live in tests/fixtures/<topic>.py; this file only makes them visible everywhere.
tests/environment.py (loaded by `-p tests.environment`) has already pointed settings at this
worker's test databases."""

from tests.fixtures.api import api_app, client
from tests.fixtures.database import (
    db,
    drop_this_workers_databases,
    e2e_database,
    e2e_engine,
    test_database,
    test_engine,
)
from tests.fixtures.processes import processes
from tests.fixtures.proxy import db_proxy
from tests.fixtures.redis import e2e_redis, redis
from tests.fixtures.smtp import slow_smtp_server, smtp_server, smtputf8_server

__all__ = [
    "api_app",
    "client",
    "db",
    "db_proxy",
    "drop_this_workers_databases",
    "e2e_database",
    "e2e_engine",
    "e2e_redis",
    "processes",
    "redis",
    "slow_smtp_server",
    "smtp_server",
    "smtputf8_server",
    "test_database",
    "test_engine",
]
