"""Argument checks shared by the query modules."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def check_json(value: Mapping[str, Any] | None, *, name: str) -> dict[str, Any] | None:
    """`value` as a plain dict that both SQLite and PostgreSQL store alike (strict JSON, no NaN)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not storable as JSON: {exc}") from None
    return dict(value)


def check_id(value: Any, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def check_count(value: Any, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_actor(value: Any, *, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValueError(f"actor must be a non-empty string of at most {max_length} characters, got {value!r}")
    return value


def check_number(value: Any, *, name: str) -> float:
    """A float that stores alike everywhere (PostgreSQL keeps NaN, SQLite would turn it into NULL)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return float(value)
