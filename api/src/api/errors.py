"""Domain errors and outages as HTTP responses, in one place. Every error body keeps FastAPI's
shape, `{"detail": ...}`."""

from __future__ import annotations

import email.message
import json
import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException

from shared.errors import Conflict, DomainError, InvalidInput, NotFound

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[DomainError], int] = {NotFound: 404, Conflict: 409, InvalidInput: 422}
DATABASE_DOWN = "the database is unavailable; try again shortly"
# What FastAPI answers, with a 400, when a JSON body cannot be decoded at all.
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
SEND_JSON = "the body must be JSON: send it with Content-Type: application/json"


class ErrorOut(BaseModel):
    detail: str


DESCRIPTIONS = {
    401: "Missing or invalid bearer token",
    403: "The token may not use this endpoint",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    415: "The body was not sent as JSON (Content-Type: application/json)",
    422: "Invalid input",
    503: "A dependency is unavailable; retry later",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI declarations for the error statuses a route can return."""
    declared: dict[int | str, dict[str, object]] = {
        s: {"model": ErrorOut, "description": DESCRIPTIONS[s]} for s in statuses if s != 422
    }
    if 422 in statuses:  # FastAPI's own validation errors carry a list; ours carry a string
        declared[422] = {"description": DESCRIPTIONS[422]}
    return {**declared, 503: {"model": ErrorOut, "description": DESCRIPTIONS[503]}}


class AsciiJSONResponse(JSONResponse):
    """Escapes non-ASCII: validation errors echo the input, which may hold lone surrogates
    that cannot be encoded as UTF-8 (the default rendering would fail with a 500)."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _is_json(content_type: str | None) -> bool:
    """FastAPI's own test of a JSON body's content type (application/json or */*+json)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A body FastAPI did not decode because it was not sent as JSON (a form, text/plain, no
    Content-Type) reaches here as raw bytes: say so with a 415, instead of a 422 complaining
    that the bytes are not an object."""
    assert isinstance(exc, RequestValidationError)
    if (
        isinstance(exc.body, bytes)
        and exc.body
        and not _is_json(request.headers.get("content-type"))
    ):
        return JSONResponse({"detail": SEND_JSON}, status_code=415)
    return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """A body FastAPI cannot decode (not UTF-8, nested past the recursion limit, an integer of
    more digits than Python parses) is a 422 json_invalid, like any other malformed JSON: one
    status for "your body is not JSON", and the one every route declares."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
        problem = str(exc.__cause__ or "undecodable body")
        return AsciiJSONResponse(
            {
                "detail": [
                    {
                        "type": "json_invalid",
                        "loc": ["body"],
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": problem[:200]},
                    }
                ]
            },
            status_code=422,
        )
    return await http_exception_handler(request, exc)


async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = next((STATUS_FOR[c] for c in type(exc).__mro__ if c in STATUS_FOR), 400)
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError) and not (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    ):
        raise exc  # a real bug, not an outage: let it be a 500 with its traceback logged
    log.warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse({"detail": DATABASE_DOWN}, status_code=503, headers={"Retry-After": "5"})


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(DomainError, on_domain_error)
    for outage in (DBAPIError, PoolTimeoutError, OSError, TimeoutError):
        app.add_exception_handler(outage, on_database_unavailable)
