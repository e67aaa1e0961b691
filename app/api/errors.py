"""HTTP rendering of every error: the exception handlers and the one JSON error body.

Every error response, whatever raised it, is `{"error": {"type": "...", "message": "..."}}`:
the type is a stable machine-readable word, the message names the bad value and what is allowed.
On the OpenAI-compatible routes the body has OpenAI's shape instead. No traceback ever leaves
the process. The errors themselves (`app.errors`) know nothing of HTTP beyond their status.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import RETRY_AFTER_S, ServiceError

log = logging.getLogger(__name__)


def error_body(type_: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": type_, "message": message}}


def error_response(
    status_code: int,
    type_: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    path: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The error body; on the OpenAI-compatible routes (`path` in OPENAI_PATHS) in OpenAI's shape,
    where a bad value is a 400 (as OpenAI answers) rather than a 422."""
    if path in OPENAI_PATHS:
        if status_code == 422:
            status_code = 400
        body: dict = openai_error_body(status_code, type_, message, param)
    else:
        body = error_body(type_, message)
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


# Routes whose errors have OpenAI's shape (their clients parse it).
OPENAI_PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})


def openai_error_body(status_code: int, type_: str, message: str, param: str | None = None) -> dict[str, dict]:
    """`{"error": {"message", "type", "param", "code"}}`: OpenAI's type, this server's as the code."""
    kind = "server_error" if status_code >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": type_}}


_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    408: "request_timeout",
    503: "not_ready",
}
# Tags of the discriminated union of POST /v1/edits: they are no field names.
_UNION_TAGS = {"one", "many"}
_MAX_SHOWN = 80


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _field_path(loc: Sequence[Any]) -> tuple[str, str]:
    """("body", "many", 0, "prompt") -> ("body", "[0].prompt"); ("query", "limit") -> ("query", "limit")."""
    if not loc:
        return "request", ""
    where, rest = str(loc[0]), [part for part in loc[1:] if part not in _UNION_TAGS]
    path = ""
    for part in rest:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return where, path


def describe_validation_error(error: Mapping[str, Any]) -> str:
    """One pydantic/FastAPI error as a sentence naming the field, the problem and the value."""
    where, path = _field_path(error.get("loc", ()))
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    kind = error.get("type")
    if kind == "missing":
        subject = {"body": "field", "query": "query parameter", "header": "header", "path": "path parameter", "cookie": "cookie"}.get(
            where, where
        )
        return f"{subject} {path!r} is required" if path else "a request body is required"
    label = {
        "body": f"field {path!r}" if path else "request body",
        "query": f"query parameter {path!r}",
        "path": f"path parameter {path!r}",
        "header": f"header {path!r}",
    }.get(where, f"{where} {path!r}")
    text = f"{label}: {message}"
    if "input" in error and kind != "extra_forbidden":
        value = error["input"]
        shown = f"a JSON {'object' if isinstance(value, dict) else 'array'}" if isinstance(value, dict | list) else _shown(value)
        text += f" (got {shown})"
    return text


def _validation_response(exc: RequestValidationError, path: str | None = None) -> JSONResponse:
    errors = list(exc.errors())
    json_errors = [e for e in errors if e.get("type") == "json_invalid"]
    if json_errors:
        error = json_errors[0]
        detail = (error.get("ctx") or {}).get("error", "malformed JSON")
        loc = error.get("loc", ())
        at = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        return error_response(400, "invalid_json", f"the request body is not valid JSON{at}: {detail}", path=path)
    messages = [describe_validation_error(e) for e in errors[:3]]
    if len(errors) > 3:
        messages.append(f"... and {len(errors) - 3} more")
    param = _field_path(errors[0].get("loc", ()))[1] or None if errors else None
    return error_response(422, "invalid_input", "; ".join(messages) or "invalid request", path=path, param=param)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's Allow names one route's only)."""
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        scope.pop("fastapi", None)  # per-request routing state: do not share it
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one body shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.type, exc.message, exc.headers, path=request.url.path, param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}; see /docs (or the console at /console)"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
            if allowed:
                exc.headers = {**(exc.headers or {}), "Allow": allowed}
            message = f"method {request.method} is not allowed on {request.url.path}" + (f"; allowed: {allowed}" if allowed else "")
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, type_, message, exc.headers, path=request.url.path)

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(request: Request, exc: PoolTimeout) -> JSONResponse:
        return database_unavailable(
            request,
            exc,
            "every database connection is busy (none was freed within LEMOE_DB_POOL_TIMEOUT_S); retry shortly",
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # Connection lost, server down, a statement past its timeout, SQLite busy beyond its
        # timeout: retryable, not a bug. Anything else a driver raises is a bug: 500.
        if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:
            return database_unavailable(
                request,
                exc,
                "the database did not answer in time (a statement ran past LEMOE_DB_STATEMENT_TIMEOUT_S); retry shortly",
            )
        if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
            return database_unavailable(request, exc, "the database is unavailable; retry shortly")
        return unexpected_error_response(request.method, request.url.path, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only errors of the outer middleware get here; UnhandledErrorMiddleware answers the
        # routes' own without dropping the keep-alive connection.
        return unexpected_error_response(request.method, request.url.path, exc)


QUERY_CANCELED = "57014"  # PostgreSQL: statement_timeout (or a cancel request) stopped it


def database_unavailable(request: Request, exc: Exception, message: str) -> JSONResponse:
    log.warning("database error on %s %s: %s", request.method, request.url.path, getattr(exc, "orig", None) or exc)
    return error_response(503, "database_unavailable", message, {"Retry-After": str(RETRY_AFTER_S)}, path=request.url.path)


def unexpected_error_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """A bug: the traceback goes to the log, a generic 500 to the client."""
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; the details are in the server log", path=path)
