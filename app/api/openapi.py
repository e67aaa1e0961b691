"""The OpenAPI document of the running server: the request limits it states are its settings."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.config import Settings
from app.schemas.common import SETTING_KEYWORDS


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
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
