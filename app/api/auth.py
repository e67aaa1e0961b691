"""Access control of the HTTP API: which key a request presents, what its route needs.

Every route declares its access once, in its decorator: `dependencies=[requires(Scope.READ)]`
(a key with that scope, or admin), or `dependencies=[public()]` (no key ever: health checks).
create_app refuses a route that declares neither, and tests/api/test_access.py checks each
route under every scope.

When keys are required (LEMOE_AUTH=on; or auto once any key exists), a request without a known,
unrevoked key is a 401 and one whose key lacks the route's scope a 403. Keys are looked up in
SQL on every request (one indexed lookup by the secret's hash), so a revocation holds at once in
every process. With LEMOE_AUTH=auto and no key yet, only loopback clients are served (and
`lemoe serve` binds loopback only); with off, nobody is asked for a key. Then X-Actor names the
audit actor, as before keys existed; with a key, the key's name is the actor and X-Actor only
adds an `on_behalf_of` note.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.domain import AuthMode, Scope
from app.errors import Forbidden, NotReady, RateLimited, Unauthenticated
from app.services import keys as key_service
from app.services.checks import ACTOR_MAX_CHARS, ACTOR_RE, DEFAULT_ACTOR, check_actor
from app.services.keys import Principal
from app.services.ratelimit import RateLimiter
from app.services.runtime import MIGRATING, STARTING

log = logging.getLogger(__name__)

SECURITY_SCHEME = "api_key"
bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SECURITY_SCHEME,
    description="An API key (`lemoe keys create NAME --scopes ...`), sent as `Authorization: Bearer <key>`",
)
# The scopes whose requests count against a per-key rate limit (the setting naming it).
RATE_LIMITED = {Scope.GENERATE: "LEMOE_RATE_LIMIT_GENERATE_PER_MIN", Scope.EDITS_WRITE: "LEMOE_RATE_LIMIT_EDITS_PER_MIN"}
BEFORE_MIGRATION = (STARTING, MIGRATING)
HOW_TO_CREATE = "create one with `lemoe keys create NAME --scopes SCOPE[,SCOPE...]`"


class AccessControl:
    """One app's access decisions: the mode, whether keys exist yet, the rate limiter."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], stage: Callable[[], str] = lambda: "ready") -> None:
        self.mode = settings.auth
        self.session_factory = session_factory
        self.stage = stage  # the app's start-up stage: keys cannot be read before the migration
        self.limiter = RateLimiter(
            {Scope.GENERATE: settings.rate_limit_generate_per_min, Scope.EDITS_WRITE: settings.rate_limit_edits_per_min}
        )
        # auto: once a key was seen, keys are required for good (keys are revoked, never deleted).
        self._keys_seen = False

    def keys_required(self, session: Session) -> bool:
        if self.mode is AuthMode.OFF:
            return False
        if self.mode is AuthMode.ON or self._keys_seen:
            return True
        self._keys_seen = key_service.any_key(session)
        return self._keys_seen

    def principal(self, request: Request, secret: str | None) -> Principal | None:
        """The request's key; None when keys are not required (then nobody is checked)."""
        if self.mode is AuthMode.OFF:
            return None
        if self.stage() in BEFORE_MIGRATION:
            raise NotReady(f"not ready: {self.stage()}; retry when /readyz answers 200", headers={"Retry-After": "5"})
        with self.session_factory() as session:
            found = key_service.identify(session, secret=secret) if secret else None
            if found is not None:
                self._keys_seen = True
                if found.revoked:
                    raise Unauthenticated(f"API key {found.name!r} was revoked; ask an admin for a new one")
                return found
            if not self.keys_required(session):
                if not is_local(request):
                    raise Unauthenticated(
                        "no API key exists yet, so this server answers loopback clients only (LEMOE_AUTH=auto); " + HOW_TO_CREATE
                    )
                return None
        if secret:
            raise Unauthenticated("the API key is not valid: no key has this secret")
        raise Unauthenticated("an API key is required: send the header `Authorization: Bearer <key>`")

    def announce(self) -> None:
        """Say at start who may call the API (the log line operators look for)."""
        if self.mode is AuthMode.OFF:
            log.warning(
                "LEMOE_AUTH=off: no API key is checked; anyone who reaches the port can edit the model, "
                "roll experts back and read the audit log"
            )
            return
        with self.session_factory() as session:
            required = self.keys_required(session)
        if required:
            log.info("API keys required (LEMOE_AUTH=%s): send `Authorization: Bearer <key>`", self.mode.value)
        else:
            log.warning("no API key exists: serving loopback clients only until one does (LEMOE_AUTH=auto); %s", HOW_TO_CREATE)


def is_local(request: Request) -> bool:
    """A loopback peer; a peer without an IP address (a Unix socket, an in-process test client)
    is on this machine too."""
    if request.client is None:
        return True
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return True


def access_of(request: Request) -> AccessControl:
    return request.app.state.access


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """Resolved once per request: the route's scope check and the audit actor share it."""
    state = request.state
    if not hasattr(state, "principal"):
        state.principal = access_of(request).principal(request, credentials.credentials if credentials else None)
    return state.principal


PrincipalDep = Annotated[Principal | None, Depends(get_principal)]


class ScopeCheck:
    """The dependency `requires(scope)` adds; `open_setting` names a Settings flag that, when
    true, opens the route to everyone (LEMOE_METRICS_PUBLIC)."""

    def __init__(self, scope: Scope, open_setting: str | None = None) -> None:
        self.scope = scope
        self.open_setting = open_setting

    def is_open(self, settings: Settings) -> bool:
        return self.open_setting is not None and bool(getattr(settings, self.open_setting))

    def __call__(self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if self.is_open(request.app.state.runtime.settings):
            return
        principal = get_principal(request, credentials)
        if principal is None:
            return
        if not self.scope.granted_by(principal.scopes):
            have = ", ".join(sorted(principal.scopes)) or "none"
            raise Forbidden(
                f"API key {principal.name!r} lacks the scope {self.scope.value!r} that {request.method} {request.url.path} "
                f"needs (it has: {have})"
            )
        if self.scope in RATE_LIMITED:
            limiter = access_of(request).limiter
            wait = limiter.acquire(principal.name, self.scope)
            if wait is not None:
                raise RateLimited(
                    f"API key {principal.name!r} sent more than {limiter.limit(self.scope)} {self.scope.value} requests a minute "
                    f"({RATE_LIMITED[self.scope]}); retry in {wait} s",
                    retry_after_s=wait,
                )

    def __repr__(self) -> str:
        return f"requires({self.scope.value!r})"


class OpenAccess:
    """The dependency `public()` adds: the route answers without a key."""

    async def __call__(self) -> None:  # async: /healthz answers even while every worker thread is busy
        return None

    def __repr__(self) -> str:
        return "public()"


def requires(scope: Scope, *, open_setting: str | None = None) -> DependsParam:
    """A route's access: `@router.get(..., dependencies=[requires(Scope.READ)])`."""
    return Depends(ScopeCheck(scope, open_setting))


def public() -> DependsParam:
    return Depends(OpenAccess())


@dataclass(frozen=True)
class Endpoint:
    """One API route as served: its methods, path, declared access and whether /docs shows it."""

    methods: frozenset[str]
    path: str
    access: ScopeCheck | OpenAccess | None  # None: nothing declared (create_app refuses that)
    in_schema: bool


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every API route of `app`, its included routers' too, with what it declared."""
    try:  # FastAPI >= 0.16x keeps included routers whole; this walks into them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older: app.routes is flat
        contexts: Iterable = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    found = []
    for route in contexts:
        if not isinstance(getattr(route, "original_route", route), APIRoute):
            continue
        declared = [d.dependency for d in route.dependencies if isinstance(d.dependency, ScopeCheck | OpenAccess)]
        if len(declared) > 1:
            raise RuntimeError(f"{sorted(route.methods)} {route.path_format} declares its access more than once: {declared}")
        access = declared[0] if declared else None
        found.append(Endpoint(frozenset(route.methods), route.path_format, access, bool(route.include_in_schema)))
    return found


def check_routes_declare_access(app: FastAPI, *, documentation: Iterable[str]) -> None:
    """Refuse to build an app with a route that says nothing about who may call it; the
    `documentation` pages (the OpenAPI document, /docs) are open to everyone and hold no data."""
    docs = set(documentation)
    missing = [f"{','.join(sorted(e.methods))} {e.path}" for e in endpoints(app) if e.path not in docs and e.access is None]
    if missing:
        raise RuntimeError(
            f"routes without a declared scope: {missing}; add dependencies=[requires(Scope....)] or [public()] (app/api/auth.py)"
        )


@dataclass(frozen=True)
class Actor:
    """Who an audit event names: the key's name, or X-Actor when keys are not required."""

    name: str
    on_behalf_of: str | None = None  # X-Actor sent with a key: a note, never the actor


def get_actor(
    principal: PrincipalDep,
    x_actor: Annotated[
        str | None,
        Header(
            description=f"Who is acting. With an API key, the key's name is the audit actor and this is only "
            f"recorded as `on_behalf_of` in the event's payload; without keys it is the actor (default "
            f"{DEFAULT_ACTOR!r}). 1-{ACTOR_MAX_CHARS} characters: letters, digits, space and . _ @ : + / -, "
            "starting with a letter or digit",
            # Stated here, checked by check_actor (its message names the header and the value).
            json_schema_extra={"pattern": f"^{ACTOR_RE.pattern}$", "maxLength": ACTOR_MAX_CHARS},
        ),
    ] = None,
) -> Actor:
    if principal is None:
        return Actor(name=check_actor(x_actor))
    return Actor(name=principal.name, on_behalf_of=None if x_actor is None else check_actor(x_actor))


ActorDep = Annotated[Actor, Depends(get_actor)]
