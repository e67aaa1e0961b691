"""The OpenAPI document of the running server: the request limits it states are its settings, and
the access each operation needs (its API-key scope, `x-lemoe-scope`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.api.auth import RATE_LIMITED, OpenAccess, endpoints
from app.api.errors import OPENAI_PATHS
from app.config import Settings
from app.schemas.common import SETTING_KEYWORDS, WWW_AUTHENTICATE


def fill_settings(node: Any, settings: Settings) -> None:
    """Replace every {"x-lemoe-settings": {keyword: field}} with {keyword: settings.<field>}.
    A default above a maximum so filled is that maximum, as the services read it (max_new_tokens
    left out is 32, or the server's limit if lower)."""
    if isinstance(node, dict):
        keywords = node.pop(SETTING_KEYWORDS, None)
        for keyword, field in (keywords or {}).items():
            node[keyword] = getattr(settings, field)
        if keywords and "maximum" in keywords and node.get("default", 0) > node["maximum"]:
            node["default"] = node["maximum"]
        for value in node.values():
            fill_settings(value, settings)
    elif isinstance(node, list):
        for value in node:
            fill_settings(value, settings)


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """State this app's limits in its document (each app has its own settings)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's, cached on the app; filling in an already filled one is a no-op
        fill_settings(schema, settings)
        state_access(app, schema, settings)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error(description: str, path: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    model = "OpenAIErrorResponse" if path in OPENAI_PATHS else "ErrorResponse"
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def state_access(app: FastAPI, schema: dict[str, Any], settings: Settings) -> None:
    """Per operation: the scope it needs (`x-lemoe-scope`, and a line of its description), the
    401/403 (and, where a rate limit applies, 429) it may answer; open ones need no key."""
    for endpoint in endpoints(app):
        if not endpoint.in_schema:
            continue
        access, path = endpoint.access, endpoint.path
        for method in endpoint.methods:
            operation = schema["paths"].get(path, {}).get(method.lower())
            if operation is None or "x-lemoe-access" in operation:
                continue
            if isinstance(access, OpenAccess) or access is None or access.is_open(settings):
                operation.pop("security", None)
                operation["x-lemoe-access"] = "public"
                continue
            scope = access.scope.value
            operation["x-lemoe-access"] = "api_key"
            operation["x-lemoe-scope"] = scope
            needs = f"Needs an API key with the scope `{scope}`" + ("." if scope == "admin" else " (or `admin`).")
            operation["description"] = f"{operation.get('description', '').rstrip()}\n\n{needs}".lstrip()
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", _error("No API key, or an unknown or revoked one (unauthenticated)", path, WWW_AUTHENTICATE))
            responses.setdefault("403", _error(f"The API key lacks the scope {scope} (forbidden)", path))
            if access.scope in RATE_LIMITED:
                retry = {
                    "Retry-After": {
                        "description": "Seconds until a request is allowed again",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    }
                }
                responses.setdefault(
                    "429", _error(f"More requests a minute than {RATE_LIMITED[access.scope]} allows (rate_limited)", path, retry)
                )
