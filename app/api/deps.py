"""Dependencies, declared once as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Path, Query, Request
from sqlalchemy.orm import Session

from app.api.auth import ActorDep as ActorDep  # the audit actor: the API key, or X-Actor without keys
from app.config import Settings
from app.errors import NotReady
from app.schemas.common import NO_NUL_PATTERN, from_settings
from app.services.checks import ACTOR_MAX_CHARS, MAX_ID
from app.services.runtime import Runtime
from app.services.stack import LiveStack
from app.store import DEFAULT_LIMIT, IDEMPOTENCY_KEY_LENGTH, MAX_LIMIT
from app.store.pagination import cursor_pattern

if TYPE_CHECKING:
    from app.engine.engine import Engine


V1 = "/v1"  # every API route lives under it (health and metrics do not)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.session_factory() as session:
        yield session


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


def get_engine(runtime: RuntimeDep) -> Engine:
    if runtime.engine is None:
        raise NotReady(f"the model is not loaded yet ({runtime.stage}); retry when /readyz answers 200", headers={"Retry-After": "5"})
    return runtime.engine


def get_stack(runtime: RuntimeDep) -> LiveStack:
    if runtime.stack is None:
        raise NotReady(
            f"the expert stack is not loaded yet ({runtime.stage}); retry when /readyz answers 200", headers={"Retry-After": "5"}
        )
    return runtime.stack


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated["Engine", Depends(get_engine)]
StackDep = Annotated[LiveStack, Depends(get_stack)]

# Ids are 32-bit in both databases; a larger one cannot exist.
EditId = Annotated[int, Path(ge=1, le=MAX_ID, description="An edit id")]
ExpertId = Annotated[int, Path(ge=1, le=MAX_ID, description="An expert id")]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="A training run id")]
IdFilter = Annotated[int | None, Query(ge=1, le=MAX_ID)]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1-{MAX_LIMIT}")]


def _cursor(kind: str) -> object:
    """The ?cursor= of one list; its exact form is stated, the store's decoder checks it."""
    return Annotated[
        str | None,
        Query(
            description=f"next_cursor of the previous page (`{kind}.<id>`: continue after that "
            "id, in the order asked); omit (or leave empty) for the first page",
            json_schema_extra={"pattern": cursor_pattern(kind)},
        ),
    ]


EditsCursor = _cursor("edits")
AuditCursor = _cursor("audit")
RunsCursor = _cursor("training_runs")
# Text filters of the lists: blank means no filter; checked by check_filter.
TEXT_FILTER = {"pattern": NO_NUL_PATTERN, **from_settings(maxLength="max_text_chars")}
ACTOR_FILTER = {"pattern": NO_NUL_PATTERN, "maxLength": ACTOR_MAX_CHARS}
DEFAULT_PAGE = DEFAULT_LIMIT
# Printable ASCII (space to tilde), as HTTP header values allow everywhere.
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]+$"
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_LENGTH,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=(
            f"1-{IDEMPOTENCY_KEY_LENGTH} printable ASCII characters, e.g. a UUID, per actor (the API key, or X-Actor without keys): a "
            "repeat with the same key and body returns the first request's edits (header "
            "Idempotent-Replayed: true) and creates none; the same key with another body is a 422 "
            "idempotency_key_reused. Keys do not expire."
        ),
    ),
]
