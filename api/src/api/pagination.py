"""Opaque keyset cursors: base64url JSON of the last row's sort key."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from fastapi import Query

from shared.errors import InvalidInput

Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="next_cursor from the previous page")
]


class InvalidCursor(InvalidInput):
    def __init__(self) -> None:
        super().__init__("invalid cursor: pass next_cursor from a previous page unchanged")


def encode_cursor(*key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_cursor(cursor: str) -> list[object]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, UnicodeError):
        raise InvalidCursor from None
    if not isinstance(key, list):
        raise InvalidCursor
    return key
