"""Shapes shared by every endpoint: the error body, the pieces of paginated lists, and the
JSON-schema keywords that state what the services check."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class ErrorDetail(BaseModel):
    type: str = Field(description="A stable machine-readable word, e.g. not_found, invalid_input")
    message: str = Field(description="What was wrong, naming the bad value and what is allowed")


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx response."""

    error: ErrorDetail


class PublicModel(BaseModel):
    """A response model read from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


# --- constraints the services check, stated in the OpenAPI document --------------------------

# The characters str.strip() removes (str.isspace()), spelled out: `\s` differs between Python
# and ECMA regular expressions (the dialect of OpenAPI), this class means the same in both.
WHITESPACE_CLASS = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Text the services accept: no NUL (PostgreSQL cannot store it), not only whitespace.
NON_BLANK_PATTERN = rf"^[^\u0000]*[^\u0000{WHITESPACE_CLASS}][^\u0000]*$"
NO_NUL_PATTERN = r"^[^\u0000]*$"

# Placeholder keyword: {"maxLength": "max_text_chars"} becomes {"maxLength": settings.max_text_chars}
# when app.api.openapi builds the running server's document.
SETTING_KEYWORDS = "x-lemoe-settings"


def from_settings(**keywords: str) -> dict[str, Any]:
    """JSON-schema keywords whose values are server settings (keyword -> Settings field name)."""
    return {SETTING_KEYWORDS: keywords}


class Documented:
    """Adds JSON-schema keywords to a type without a second check: the services enforce them,
    with messages that name the value (`Annotated[str, Documented(pattern=...)]`)."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(self.keywords)
        return schema


# An ISO 8601 date, or date and time, as text (pydantic alone would also take numbers as Unix
# times); pydantic then parses it.
_DATE_TIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})?)?"
)


def _date_time_text(value: Any) -> Any:
    if isinstance(value, str) and _DATE_TIME_RE.fullmatch(value):
        return value
    raise ValueError("expected an ISO 8601 date and time such as 2024-05-01T12:00:00Z (UTC if no zone)")


# A date-time query parameter: RFC 3339 (`format: date-time`); also taken: no zone (UTC), a date
# alone (its midnight, UTC).
Timestamp = Annotated[datetime, BeforeValidator(_date_time_text)]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (sent with database_unavailable)",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`: send an API key", "schema": {"type": "string"}}}
# Every status any /v1 route can answer with besides its own success (and 409, per route).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed request (e.g. invalid JSON)"),
    401: {**_error("No API key, or an unknown or revoked one (unauthenticated)"), "headers": WWW_AUTHENTICATE},
    403: _error("The API key lacks the scope this operation needs; the message names it (forbidden)"),
    404: _error("Unknown id"),
    408: _error("The request body did not arrive in time"),
    413: _error("The request body is larger than this server accepts"),
    422: _error("A value is not allowed; the message names it"),
    500: _error("Internal error (details only in the server log)"),
    503: {**_error("The model is still loading, or the database is unavailable"), "headers": RETRY_AFTER},
}
