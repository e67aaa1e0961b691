"""API keys as admins see them over HTTP (the secret only once, in the answer that created it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.domain import Scope
from app.schemas.common import PublicModel
from app.services.keys import KEY_NAME_RE
from app.store.models import KEY_NAME_LENGTH

KEY_NAME_PATTERN = f"^{KEY_NAME_RE.pattern}$"
KeyName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=KEY_NAME_LENGTH,
        pattern=KEY_NAME_PATTERN,
        description="The key's name, recorded as the actor of everything it does; letters, digits and . _ @ : + -",
    ),
]


class KeyPublic(PublicModel):
    name: str
    scopes: list[Scope]
    prefix: str = Field(description="The first characters of the secret, to tell keys apart")
    created_at: datetime
    last_used_at: datetime | None = Field(description="The last request with this key (to the minute)")
    revoked_at: datetime | None


class KeysPublic(BaseModel):
    items: list[KeyPublic]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "ci-bot", "scopes": ["edits:write", "read"]}]})

    name: KeyName
    scopes: list[Scope] = Field(min_length=1, description="What the key may do; admin implies every other scope")


class KeyCreated(BaseModel):
    key: KeyPublic
    secret: str = Field(
        description="The key itself, shown this once (only its hash is stored): send it as `Authorization: Bearer <secret>`"
    )
