"""Text that reaches the database: trimmed, bounded, and free of what PostgreSQL refuses or
what would corrupt a log line (control characters, NUL, lone surrogates)."""

import unicodedata

from pydantic import AfterValidator, BeforeValidator


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _printable(value: str) -> str:
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError("must not contain control characters or lone surrogates")
    return value


Trimmed = BeforeValidator(_strip)
Printable = AfterValidator(_printable)
