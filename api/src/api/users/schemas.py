from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from api.text import Printable, Trimmed
from shared.models.users import EMAIL_MAX_LENGTH, FULL_NAME_MAX_LENGTH
from shared.settings import settings
from shared.users.addresses import stored_address
from shared.users.service import UserChange

# The limits sit on the string itself, inside the validators (Trimmed still runs first): after
# a validator they become a generic check whose error reads "too_long ... at most 200 items".
FullName = Annotated[
    str, StringConstraints(min_length=1, max_length=FULL_NAME_MAX_LENGTH), Trimmed, Printable
]


def _deliverable(value: str) -> str:
    return stored_address(value, smtputf8=settings.smtp_utf8)


# Trimmed, then checked by email-validator (no DNS lookups) and put in the stored form: the
# domain in IDNA, lower case; the local part as typed (shared.users.addresses). Uniqueness
# ignores case: the database has a unique index on lower(email).
Email = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX_LENGTH),
    Trimmed,
    AfterValidator(_deliverable),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": EMAIL_MAX_LENGTH}),
]


class UserCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email = Field(
        description="Stored and returned with its domain in IDNA (lower case) and its local part "
        "as typed; a local part that is not ASCII is accepted only when the mail server offers "
        "SMTPUTF8 (setting SMTP_UTF8), else 422"
    )
    full_name: FullName


class UserUpdateIn(BaseModel):
    """A partial update: a field left out stays as it is. A field sent as null is a 422, not a
    silent no-op: neither can be emptied, and null would read as "clear it"."""

    model_config = ConfigDict(extra="forbid")

    # None only as the "left out" default, so the schema does not offer null.
    full_name: FullName | SkipJsonSchema[None] = None
    is_active: bool | SkipJsonSchema[None] = None

    @field_validator("full_name", "is_active", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:  # defaults are not validated: only an explicit null gets here
            raise ValueError("may be left out, but not null")
        return value

    def to_change(self) -> UserChange:
        return UserChange(full_name=self.full_name, is_active=self.is_active)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    last_seen_at: datetime | None
    welcome_email_sent_at: datetime | None
    deactivated_at: datetime | None


class UserCreatedOut(UserOut):
    welcome_run_id: uuid.UUID = Field(description="The run that sends the welcome email")


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None
