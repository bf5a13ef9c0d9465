"""Plain ASGI middleware: cheaper than BaseHTTPMiddleware on every request."""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import context_value, log_context

MAX_BODY_BYTES = 64 * 1024
REQUEST_ID_HEADER = b"x-request-id"
# A caller's id is echoed into logs and task headers: keep it short and printable.
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")

log = logging.getLogger("api.requests")

REQUESTS = Counter("http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def current_request_id() -> str | None:
    value = context_value("request_id")
    return value if isinstance(value, str) else None


class _HttpMiddleware:
    """Passes lifespan and websocket traffic through untouched; subclasses handle HTTP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestIdMiddleware(_HttpMiddleware):
    """Takes X-Request-ID from the request or makes one, and returns it on the response."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        request_id = given.decode() if VALID_REQUEST_ID.match(given) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                ]
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware(_HttpMiddleware):
    """413 for bodies over MAX_BODY_BYTES, declared or streamed."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await _too_large(send)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    # Answer now, and tell the app the client left, so it stops reading.
                    refused = True
                    await _too_large(send)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, send_unless_refused)


async def _too_large(send: Send) -> None:
    body = b'{"detail":"request body larger than 65536 bytes"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware(_HttpMiddleware):
    """One log line and the metrics per request, by route template (not the raw path: ids
    would explode the label set and put identifiers in the logs). The documentation pages
    (plain Starlette routes, which leave no route in the scope) are labelled by their path;
    only a path no route serves is `unmatched`."""

    def __init__(self, app: ASGIApp, documentation_paths: frozenset[str] = frozenset()) -> None:
        super().__init__(app)
        self.documentation_paths = documentation_paths

    def _route(self, scope: Scope) -> str:
        route = getattr(scope.get("route"), "path", None)
        if isinstance(route, str):
            return route
        path = scope["path"]
        return path if path in self.documentation_paths else "unmatched"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            elapsed = time.perf_counter() - started
            route = self._route(scope)
            method = scope["method"]
            REQUESTS.labels(route, method, str(status)).inc()
            LATENCY.labels(route, method).observe(elapsed)
            log.info(
                "%s %s %s",
                method,
                route,
                status,
                extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
