"""GET/POST /v1/keys, POST /v1/keys/{name}/revoke: API keys, for admin keys only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api.auth import requires
from app.api.deps import V1, ActorDep, SessionDep
from app.domain import Scope
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.schemas.keys import KEY_NAME_PATTERN, KeyCreate, KeyCreated, KeyPublic, KeysPublic
from app.services import keys as key_service
from app.store.models import KEY_NAME_LENGTH

router = APIRouter(prefix=f"{V1}/keys", tags=["keys"], responses=ERROR_RESPONSES, dependencies=[requires(Scope.ADMIN)])

KeyNamePath = Annotated[str, Path(min_length=1, max_length=KEY_NAME_LENGTH, pattern=KEY_NAME_PATTERN, description="A key's name")]


@router.get("")
def list_keys(*, session: SessionDep) -> KeysPublic:
    """Every key, revoked ones included, oldest first (never a secret)."""
    return KeysPublic(items=[KeyPublic.model_validate(k) for k in key_service.list_keys(session)])


@router.post(
    "",
    status_code=201,
    responses={409: {"model": ErrorResponse, "description": "The name is taken (key_name_taken); revoked keys keep theirs"}},
)
def create_key(*, session: SessionDep, actor: ActorDep, body: KeyCreate, response: Response) -> KeyCreated:
    """A new key; the answer holds its secret, the only time it is shown (audited as key.created)."""
    created = key_service.create_key(session, name=body.name, scopes=body.scopes, actor=actor.name, on_behalf_of=actor.on_behalf_of)
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(key=KeyPublic.model_validate(created.key), secret=created.secret)


@router.post(
    "/{name}/revoke",
    responses={409: {"model": ErrorResponse, "description": "Already revoked (key_already_revoked)"}},
)
def revoke_key(*, session: SessionDep, actor: ActorDep, name: KeyNamePath) -> KeyPublic:
    """Revoke a key: from the next request on, in every process, it is refused (401)."""
    return KeyPublic.model_validate(key_service.revoke_key(session, name=name, actor=actor.name, on_behalf_of=actor.on_behalf_of))
