"""Shapes shared by every endpoint: the error body and the pieces of paginated lists."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    type: str = Field(description="A stable machine-readable word, e.g. not_found, invalid_input")
    message: str = Field(description="What was wrong, naming the bad value and what is allowed")


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx response."""

    error: ErrorDetail


class PublicModel(BaseModel):
    """A response model read from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


# Documented on every route that can fail with a client error.
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorResponse, "description": "Malformed request (e.g. invalid JSON)"},
    404: {"model": ErrorResponse, "description": "Unknown id"},
    422: {"model": ErrorResponse, "description": "A value is not allowed; the message names it"},
}
