"""Schemathesis against the schema the API serves: every operation, valid and invalid input,
with the admin token. No 5xx, and every response (status, content type, headers, body) as the
schema declares it.

The app runs in-process on the test's rolled-back session, so the test database stays clean.
Hypothesis drives generation synchronously, so it runs in a thread; each request is sent on
the test's event loop, the one that owns the app's connections.
"""

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import schemathesis
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.api import ADMIN

# Checks that judge the response alone. Those that send requests of their own (ignored_auth,
# unsupported_method, use_after_free...) would go through schemathesis' transport, not the
# in-process app; tests/api/test_auth.py covers tokens and methods for every route instead.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = 100  # per operation and generation mode; small input spaces end sooner
MINIMUM_CASES = 1000

AnyCase = Case[Any]
AnyOperation = APIOperation[Any, Any, Any, Any]


def _send(client: AsyncClient, loop: asyncio.AbstractEventLoop, case: AnyCase) -> Response:
    """The request schemathesis would send with `requests`, sent with the in-process client."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    assert not kwargs.get("files"), "no operation takes multipart bodies"
    assert not kwargs.get("cookies"), "no operation takes cookies"
    content = json.dumps(kwargs["json"]).encode() if "json" in kwargs else kwargs.get("data")
    request = client.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        content=content,
    )
    return asyncio.run_coroutine_threadsafe(request, loop).result()


def _operations(schema: schemathesis.BaseSchema) -> list[AnyOperation]:
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    return operations


def _fuzz(operation: AnyOperation, mode: GenerationMode, run: Callable[[AnyCase], None]) -> int:
    """Runs `run` on generated cases of one operation; returns how many."""
    count = 0

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the same cases on every run: CI never fails by luck
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, headers=ADMIN))
    def generated(case: AnyCase) -> None:
        nonlocal count
        count += 1
        run(case)

    try:
        generated()
    except Unsatisfiable:
        # Whatever is left to generate is always valid (a run id is any string; the token is
        # fixed): there is no negative case to make.
        assert mode == GenerationMode.NEGATIVE
        assert count == 0
    return count


async def test_every_operation_conforms_to_the_served_schema(
    api_app: FastAPI, client: AsyncClient
) -> None:
    # The `client` fixture puts the app on the test's session; this client, on the same app,
    # answers a crash with the 500 a real server sends instead of raising it in the test.
    transport = ASGITransport(app=api_app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url=client.base_url) as http:
        await _check_every_operation(http)


async def _check_every_operation(client: AsyncClient) -> None:
    served = await client.get("/openapi.json")
    schema = schemathesis.openapi.from_dict(served.json())
    loop = asyncio.get_running_loop()

    statuses: Counter[int] = Counter()

    def run(case: AnyCase) -> None:
        response = _send(client, loop, case)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=ADMIN)

    def run_all() -> dict[str, int]:
        counts = {}
        for operation in _operations(schema):
            counts[f"{operation.label} positive"] = _fuzz(operation, GenerationMode.POSITIVE, run)
            # Without parameters or a body there is nothing to make invalid.
            if operation.body or any(True for _ in operation.iter_parameters()):
                negative = _fuzz(operation, GenerationMode.NEGATIVE, run)
                counts[f"{operation.label} negative"] = negative
        return counts

    started = time.monotonic()
    counts = await asyncio.to_thread(run_all)
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"\nschemathesis: {total} cases in {elapsed:.1f}s, statuses {dict(statuses)}: {counts}")
    assert total >= MINIMUM_CASES, counts
