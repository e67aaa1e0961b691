"""API keys: create one (its secret shown once), list, revoke, and identify the key a request
presents. Only the SHA-256 of a secret is stored; a secret is found by its hash, never compared
in clear."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import store
from app.domain import AuditAction, Scope
from app.errors import InvalidInput, KeyAlreadyRevoked, KeyNameTaken, KeyNotFound
from app.store.models import KEY_NAME_LENGTH

log = logging.getLogger(__name__)

SECRET_PREFIX = "lemoe_"
SECRET_BYTES = 32  # 256 random bits
DISPLAY_CHARS = 4  # of the random part, shown in lists to tell keys apart
# A key name becomes the actor of its audit events and a path segment of /v1/keys/{name}: a
# subset of what X-Actor allows, without space or slash.
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]*")
MIN_SECRET_CHARS = 32  # for a secret given by the deployment (LEMOE_ADMIN_KEY)
# last_used_at is written at most this often per key, so that reading it costs no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who a request's key says it is: its name (the audit actor) and what it may do."""

    name: str
    scopes: frozenset[Scope]
    revoked: bool = False


@dataclass(frozen=True)
class CreatedKey:
    key: store.ApiKey
    secret: str  # shown once, to whoever created the key; never stored nor logged


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def secret_sha256(secret: str) -> str:
    """The stored form of a secret. A fast hash is enough: the secrets are 256 random bits, so
    nobody can search for one from its hash (a slow KDF such as bcrypt or argon2 protects
    low-entropy passwords, and would cost every request)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(secret: str) -> str:
    random_part = secret.removeprefix(SECRET_PREFIX)
    return (SECRET_PREFIX if secret.startswith(SECRET_PREFIX) else "") + random_part[:DISPLAY_CHARS]


def check_key_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > KEY_NAME_LENGTH or not KEY_NAME_RE.fullmatch(name):
        shown = name[:KEY_NAME_LENGTH] if isinstance(name, str) else name
        raise InvalidInput(
            f"a key name must be 1-{KEY_NAME_LENGTH} characters: letters, digits and . _ @ : + - "
            f"(starting with a letter or digit), got {shown!r}",
            param="name",
        )
    return name


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Scopes named by a client or the command line, checked, without repeats, in Scope order."""
    given = [v.strip() for v in values if v.strip()]
    unknown = [v for v in given if v not in Scope._value2member_map_]
    if unknown:
        raise InvalidInput(f"unknown scope {unknown[0]!r}; one of {[s.value for s in Scope]}", param="scopes")
    if not given:
        raise InvalidInput(f"a key needs at least one scope; one or more of {[s.value for s in Scope]}", param="scopes")
    return [s for s in Scope if s.value in given]


def create_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    actor: str,
    on_behalf_of: str | None = None,
    secret: str | None = None,
) -> CreatedKey:
    """A new key (a fresh random secret unless `secret` is given), committed with key.created."""
    name = check_key_name(name)
    checked = parse_scopes(scopes)
    secret = secret or new_secret()
    if store.get_api_key_by_name(session, name=name) is not None:
        raise KeyNameTaken(name)
    try:
        row = store.add_api_key(
            session, name=name, prefix=display_prefix(secret), sha256=secret_sha256(secret), scopes=[s.value for s in checked]
        )
        store.append_audit(
            session,
            actor=actor,
            action=AuditAction.KEY_CREATED,
            payload={"name": name, "scopes": row.scopes, "prefix": row.prefix},
            on_behalf_of=on_behalf_of,
        )
        session.commit()
    except IntegrityError:  # the same name, created concurrently (or, never in practice, the same secret)
        session.rollback()
        raise KeyNameTaken(name) from None
    log.info("API key %r created (scopes %s) by %s", name, row.scopes, actor)
    return CreatedKey(key=row, secret=secret)


def list_keys(session: Session) -> list[store.ApiKey]:
    return store.list_api_keys(session)


def revoke_key(session: Session, *, name: str, actor: str, on_behalf_of: str | None = None) -> store.ApiKey:
    """Revoke at once: every process checks the key in SQL on each request."""
    key = store.get_api_key_by_name(session, name=name)
    if key is None:
        raise KeyNotFound(name)
    if key.revoked_at is not None:
        raise KeyAlreadyRevoked(name)
    store.revoke_api_key(session, key=key)
    store.append_audit(session, actor=actor, action=AuditAction.KEY_REVOKED, payload={"name": name}, on_behalf_of=on_behalf_of)
    session.commit()
    log.info("API key %r revoked by %s", name, actor)
    return key


def identify(session: Session, *, secret: str) -> Principal | None:
    """The key whose secret this is (one indexed lookup by its hash), or None; records its use."""
    digest = secret_sha256(secret)
    key = store.get_api_key_by_hash(session, sha256=digest)
    if key is None or not hmac.compare_digest(key.sha256, digest):
        return None
    if key.revoked_at is None:
        now = store.utcnow()
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            store.touch_api_key(session, key_id=key.id, at=now)
            session.commit()
    # A scope this version does not know (written by a newer one) grants nothing here.
    scopes = frozenset(Scope(s) for s in key.scopes if s in Scope._value2member_map_)
    return Principal(name=key.name, scopes=scopes, revoked=key.revoked_at is not None)


def revoked_since(session: Session, principal: Principal) -> bool:
    """Whether the key `principal` was read from is revoked now (a long-lived stream asks again)."""
    key = store.get_api_key_by_name(session, name=principal.name)
    return key is None or key.revoked_at is not None


def any_key(session: Session) -> bool:
    """Whether any key was ever created: a revoked one counts, so that revoking every key locks
    the API rather than opening it."""
    return store.any_api_key(session)


def ensure_admin_key(session: Session, *, name: str, secret: str) -> None:
    """The deployment's admin key (LEMOE_ADMIN_KEY[_FILE]): created unless a key has this secret.
    A revoked one stays revoked; a name taken by another key is logged, not replaced."""
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidInput(
            f"LEMOE_ADMIN_KEY (or the file LEMOE_ADMIN_KEY_FILE names) must be at least {MIN_SECRET_CHARS} characters; "
            "make one with: python -c \"import secrets; print('lemoe_' + secrets.token_urlsafe(32))\""
        )
    existing = store.get_api_key_by_hash(session, sha256=secret_sha256(secret))
    if existing is not None:
        if existing.revoked_at is not None:
            log.warning("the admin key from LEMOE_ADMIN_KEY[_FILE] (%r) is revoked; it stays revoked", existing.name)
        return
    if store.get_api_key_by_name(session, name=name) is not None:
        log.warning(
            "LEMOE_ADMIN_KEY[_FILE] is set but not created: the name %r is taken by another key; set LEMOE_ADMIN_KEY_NAME",
            name,
        )
        return
    try:
        create_key(session, name=name, scopes=[Scope.ADMIN], actor="system", secret=secret)
    except KeyNameTaken:
        pass  # another process created it at the same moment
