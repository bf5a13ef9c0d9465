from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator
from pydantic.json_schema import SkipJsonSchema

from api.text import Printable, Trimmed
from shared.models.users import FULL_NAME_MAX_LENGTH
from shared.users.service import UserChange

# The limits sit on the string itself, inside the validators (Trimmed still runs first): after
# a validator they become a generic check whose error reads "too_long ... at most 200 items".
FullName = Annotated[
    str, StringConstraints(min_length=1, max_length=FULL_NAME_MAX_LENGTH), Trimmed, Printable
]
# Trimmed, then checked and normalized by email-validator (no DNS lookups). Uniqueness ignores
# case: the database has a unique index on lower(email).
Email = Annotated[EmailStr, Trimmed]


class UserCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
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
