"""Access control: every route under every scope, revocation at once, the key's name as the audit
actor, LEMOE_AUTH modes, /metrics, rate limits, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.auth import AccessControl, OpenAccess, ScopeCheck, check_routes_declare_access, endpoints
from app.api.errors import OPENAI_PATHS
from app.config import Settings
from app.domain import AuthMode, Scope
from app.engine.engine import Engine
from app.main import DOCS_URL, REDOC_URL, create_app
from app.services import keys as key_service
from app.services.ratelimit import RateLimiter
from app.services.runtime import MIGRATING
from tests.api.support import FRANCE, assert_error, running_app, runtime_of, tiny_settings

PUBLIC = "public"
METRICS = "read unless LEMOE_METRICS_PUBLIC"
# Every route and what it needs. A route added without a scope fails create_app; one added with a
# scope but missing here fails test_every_route_is_in_the_table: add its row (and its request
# below when it needs one).
ROUTE_ACCESS: dict[tuple[str, str], Scope | str] = {
    ("POST", "/v1/edits"): Scope.EDITS_WRITE,
    ("GET", "/v1/edits"): Scope.READ,
    ("GET", "/v1/edits/{edit_id}"): Scope.READ,
    ("GET", "/v1/edits/{edit_id}/events"): Scope.READ,
    ("POST", "/v1/edits/{edit_id}/retry"): Scope.EDITS_WRITE,
    ("DELETE", "/v1/edits/{edit_id}"): Scope.EDITS_WRITE,
    ("GET", "/v1/events"): Scope.READ,
    ("POST", "/v1/generate"): Scope.GENERATE,
    ("GET", "/v1/generate"): Scope.GENERATE,
    ("GET", "/v1/models"): Scope.GENERATE,
    ("POST", "/v1/completions"): Scope.GENERATE,
    ("POST", "/v1/chat/completions"): Scope.GENERATE,
    ("POST", "/v1/training-runs"): Scope.EDITS_WRITE,
    ("GET", "/v1/training-runs"): Scope.READ,
    ("GET", "/v1/training-runs/{run_id}"): Scope.READ,
    ("GET", "/v1/experts"): Scope.READ,
    ("GET", "/v1/experts/{expert_id}"): Scope.READ,
    ("POST", "/v1/experts/{expert_id}/deactivate"): Scope.ADMIN,
    ("POST", "/v1/experts/{expert_id}/activate"): Scope.ADMIN,
    ("GET", "/v1/audit"): Scope.READ,
    ("GET", "/v1/audit/daily"): Scope.READ,
    ("POST", "/v1/generate/compare"): Scope.GENERATE,
    ("GET", "/v1/route-scores"): Scope.READ,
    ("GET", "/v1/keys"): Scope.ADMIN,
    ("POST", "/v1/keys"): Scope.ADMIN,
    ("POST", "/v1/keys/{name}/revoke"): Scope.ADMIN,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): METRICS,
    # The console's page and assets hold no data (it reads through the API above with the user's key).
    ("GET", "/"): PUBLIC,
    ("GET", "/console"): PUBLIC,
    ("GET", "/console/{asset}"): PUBLIC,
}
# Served, but not API operations: absent from the OpenAPI document.
NOT_IN_DOCUMENT = {("GET", "/"), ("GET", "/console"), ("GET", "/console/{asset}")}
# Path parameters: values that exist nowhere (a 404 says the route ran).
PATH_VALUES = {"edit_id": "1", "run_id": "1", "expert_id": "1", "name": "nobody", "asset": "console.js"}


def declared(access: ScopeCheck | OpenAccess | None) -> Scope | str | None:
    if isinstance(access, OpenAccess):
        return PUBLIC
    if isinstance(access, ScopeCheck):
        return METRICS if access.open_setting == "metrics_public" else access.scope
    return None


def served_routes(app: FastAPI) -> dict[tuple[str, str], Scope | str | None]:
    docs = {DOCS_URL, REDOC_URL, app.openapi_url, app.swagger_ui_oauth2_redirect_url}
    return {(m, e.path): declared(e.access) for e in endpoints(app) if e.path not in docs for m in e.methods}


# Query strings that make a route answer at once (an event stream would otherwise stay open).
QUERIES = {"/v1/events": "?limit=1&timeout_s=0.1"}


def url(path: str) -> str:
    query = QUERIES.get(path, "")
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path + query


def test_every_route_is_in_the_table(settings: Settings):
    app = create_app(settings, load_in_background=True)

    assert served_routes(app) == ROUTE_ACCESS


def test_a_route_without_a_scope_stops_the_app():
    app = FastAPI()

    @app.get("/v1/new-thing")
    def new_thing() -> dict:
        return {}

    with pytest.raises(RuntimeError, match="GET /v1/new-thing"):
        check_routes_declare_access(app, documentation=())


@dataclass
class Keys:
    by_scope: dict[Scope, str]  # a key with just that scope
    revoked: str


def make_key(client: TestClient, name: str, *scopes: str) -> str:
    with runtime_of(client).session_factory() as session:
        return key_service.create_key(session, name=name, scopes=list(scopes), actor="test").secret


@pytest.fixture
def keyed(db_client: TestClient) -> Iterator[tuple[TestClient, Keys]]:
    keys = Keys(by_scope={scope: make_key(db_client, f"only-{scope.value.replace(':', '-')}", scope) for scope in Scope}, revoked="")
    keys.revoked = make_key(db_client, "gone", Scope.ADMIN)
    with runtime_of(db_client).session_factory() as session:
        key_service.revoke_key(session, name="gone", actor="test")
    yield db_client, keys


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def error_of(response, path: str) -> dict:
    """The error's type and message in the project's shape, or OpenAI's on its routes."""
    body = response.json()
    if path in OPENAI_PATHS:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return {"type": body["error"]["code"], "message": body["error"]["message"]}
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    return body["error"]


def test_every_route_under_every_scope(keyed):
    client, keys = keyed
    for (method, path), needs in ROUTE_ACCESS.items():
        target = url(path)
        if needs in (PUBLIC, METRICS):
            assert client.request(method, target).status_code == 200, path  # open, keys or not
            continue
        callers = {"no key": {}, "unknown key": bearer("lemoe_" + "x" * 43), "revoked key": bearer(keys.revoked)}
        for caller, headers in callers.items():
            response = client.request(method, target, headers=headers)
            assert response.status_code == 401, (method, path, caller, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert error_of(response, path)["type"] == "unauthenticated"
        for scope, secret in keys.by_scope.items():
            response = client.request(method, target, headers=bearer(secret))
            if needs is scope or scope is Scope.ADMIN:
                assert response.status_code not in (401, 403), (method, path, scope, response.text)
            else:
                assert response.status_code == 403, (method, path, scope, response.text)
                error = error_of(response, path)
                assert error["type"] == "forbidden"
                assert repr(needs.value) in error["message"], error


def test_revocation_takes_effect_at_once_in_every_process(db_settings: Settings, shared_engine: Engine):
    """Two apps on one database (two replicas): a key revoked through one is refused by the
    other at its very next request."""
    with running_app(db_settings, shared_engine) as one, running_app(db_settings, shared_engine) as two:
        admin = make_key(one, "root", Scope.ADMIN)
        created = one.post("/v1/keys", json={"name": "ci", "scopes": ["read"]}, headers=bearer(admin))
        assert created.status_code == 201, created.text
        ci = created.json()["secret"]
        assert two.get("/v1/edits", headers=bearer(ci)).status_code == 200

        revoked = one.post("/v1/keys/ci/revoke", headers=bearer(admin))

        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        for app in (one, two):
            assert_error(app.get("/v1/edits", headers=bearer(ci)), 401, "unauthenticated", "'ci' was revoked")
        assert_error(one.post("/v1/keys/ci/revoke", headers=bearer(admin)), 409, "key_already_revoked")
        # Revoked keys still count: revoking every key locks the API rather than opening it.
        with one.app.state.access.session_factory() as session:
            key_service.revoke_key(session, name="root", actor="cli")
        assert_error(two.get("/v1/edits"), 401, "unauthenticated")
        assert_error(two.get("/v1/edits", headers=bearer(admin)), 401, "unauthenticated", "'root' was revoked")


def test_the_key_is_the_actor_and_x_actor_only_a_note(db_client: TestClient):
    secret = make_key(db_client, "ci-bot", Scope.EDITS_WRITE, Scope.READ)
    headers = {**bearer(secret), "X-Actor": "alice"}
    [edit_id] = db_client.post("/v1/edits", json=FRANCE, headers=headers).json()["ids"]
    plain = db_client.post("/v1/edits", json=FRANCE, headers=bearer(secret))
    assert plain.status_code == 202

    events = db_client.get("/v1/audit", params={"action": "edit.submitted", "order": "asc"}, headers=bearer(secret)).json()["items"]

    assert [e["actor"] for e in events] == ["ci-bot", "ci-bot"]
    assert events[0]["edit_id"] == edit_id and events[0]["payload"]["on_behalf_of"] == "alice"
    assert "on_behalf_of" not in events[1]["payload"]
    # X-Actor is still checked: a bad one is refused, never stored.
    assert_error(db_client.post("/v1/edits", json=FRANCE, headers={**bearer(secret), "X-Actor": "<script>"}), 422, "invalid_input")


def test_idempotency_keys_are_per_api_key_not_per_x_actor(db_client: TestClient):
    secret = make_key(db_client, "ci-bot", Scope.EDITS_WRITE)
    first = db_client.post("/v1/edits", json=FRANCE, headers={**bearer(secret), "X-Actor": "alice", "Idempotency-Key": "k1"})
    again = db_client.post("/v1/edits", json=FRANCE, headers={**bearer(secret), "X-Actor": "bob", "Idempotency-Key": "k1"})

    assert first.status_code == again.status_code == 202
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["ids"] == first.json()["ids"]


def test_key_management_over_http(db_client: TestClient):
    admin = bearer(make_key(db_client, "root", Scope.ADMIN))
    created = db_client.post("/v1/keys", json={"name": "gen", "scopes": ["generate", "generate"]}, headers={**admin, "X-Actor": "ops"})
    assert created.status_code == 201, created.text
    assert created.headers["Cache-Control"] == "no-store"
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("lemoe_") and len(secret) > 40
    assert body["key"]["scopes"] == ["generate"] and secret.startswith(body["key"]["prefix"])
    assert db_client.get("/v1/models", headers=bearer(secret)).status_code == 200

    listed = db_client.get("/v1/keys", headers=admin)
    assert [k["name"] for k in listed.json()["items"]] == ["root", "gen"]
    assert secret not in listed.text and key_service.secret_sha256(secret) not in listed.text
    assert listed.json()["items"][0]["last_used_at"] is not None  # root has just been used

    assert_error(db_client.post("/v1/keys", json={"name": "gen", "scopes": ["read"]}, headers=admin), 409, "key_name_taken", "'gen'")
    assert_error(db_client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=admin), 422, "invalid_input", "scopes")
    assert_error(db_client.post("/v1/keys", json={"name": "a b", "scopes": ["read"]}, headers=admin), 422, "invalid_input", "name")
    assert_error(db_client.post("/v1/keys/nobody/revoke", headers=admin), 404, "not_found", "'nobody'")
    assert db_client.post("/v1/keys/gen/revoke", headers=admin).status_code == 200

    events = db_client.get("/v1/audit", params={"order": "asc"}, headers=admin).json()["items"]
    key_events = [(e["action"], e["actor"], e["payload"]["name"]) for e in events if e["action"].startswith("key.")]
    assert key_events == [("key.created", "test", "root"), ("key.created", "root", "gen"), ("key.revoked", "root", "gen")]
    assert events[1]["payload"]["on_behalf_of"] == "ops"
    assert secret not in str(events)


def test_hashes_only_at_rest(db_client: TestClient):
    secret = make_key(db_client, "ci-bot", Scope.READ)
    assert db_client.get("/v1/edits", headers=bearer(secret)).status_code == 200
    database = runtime_of(db_client).database
    with database.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM api_keys").all()
        audit = conn.exec_driver_sql("SELECT * FROM audit_events").all()
    [row] = rows
    stored = " ".join(str(value) for value in row)
    assert secret not in stored and secret.removeprefix("lemoe_") not in stored
    assert key_service.secret_sha256(secret) in stored
    assert secret not in str(audit)


def test_a_key_is_found_by_its_hash_and_compared_in_constant_time(db_client: TestClient, monkeypatch: pytest.MonkeyPatch):
    secret = make_key(db_client, "ci-bot", Scope.READ)
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(key_service.hmac, "compare_digest", compare_digest)
    looked_up = []
    original = key_service.store.get_api_key_by_hash

    def get_api_key_by_hash(session, *, sha256):
        looked_up.append(sha256)
        return original(session, sha256=sha256)

    monkeypatch.setattr(key_service.store, "get_api_key_by_hash", get_api_key_by_hash)

    assert db_client.get("/v1/edits", headers=bearer(secret)).status_code == 200

    digest = key_service.secret_sha256(secret)
    assert looked_up == [digest]  # one lookup, by hash: the secret never reaches SQL
    assert compared == [(digest, digest)]


def test_no_secret_in_logs_or_errors(db_client: TestClient, caplog: pytest.LogCaptureFixture):
    caplog.set_level("DEBUG")
    admin = make_key(db_client, "root", Scope.ADMIN)
    created = db_client.post("/v1/keys", json={"name": "gen", "scopes": ["generate"]}, headers=bearer(admin)).json()["secret"]
    wrong = "lemoe_" + "w" * 43
    answers = [
        db_client.get("/v1/edits", headers=bearer(created)),  # 403
        db_client.get("/v1/edits", headers=bearer(wrong)),  # 401
        db_client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=bearer(wrong)),
        db_client.post("/v1/keys/gen/revoke", headers=bearer(admin)),
        db_client.get("/v1/models", headers=bearer(created)),  # revoked
    ]
    assert [a.status_code for a in answers] == [403, 401, 401, 200, 401]
    for secret in (admin, created, wrong):
        assert secret not in caplog.text
        for answer in answers:
            assert secret not in answer.text
    assert "key 'gen'" in caplog.text  # the log names keys, never their secrets


def test_auto_without_keys_serves_loopback_clients_only(client: TestClient):
    app = client.app
    remote, local, local6 = (TestClient(app, client=(host, 4000)) for host in ("203.0.113.7", "127.0.0.1", "::1"))
    assert_error(remote.get("/v1/edits"), 401, "unauthenticated", "loopback")
    assert remote.get("/healthz").status_code == 200
    assert local.get("/v1/edits").status_code == local6.get("/v1/edits").status_code == 200
    # An in-process client (no IP address) is local too; X-Actor still names the actor, and a
    # bearer token nobody issued is ignored (OpenAI clients always send one).
    assert client.post("/v1/edits", json=FRANCE, headers={"X-Actor": "frank", **bearer("lemoe_ignored")}).status_code == 202
    assert [e["actor"] for e in client.get("/v1/audit").json()["items"]] == ["frank"]
    # Once a key exists, it is required from everyone.
    make_key(client, "first", Scope.READ)
    assert_error(local.get("/v1/edits"), 401, "unauthenticated", "Authorization: Bearer")
    assert_error(client.get("/v1/edits"), 401, "unauthenticated")


def test_on_requires_a_key_even_before_one_exists(tiny_model_dir: Path, tmp_path: Path, shared_engine: Engine):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", auth=AuthMode.ON)
    with running_app(settings, shared_engine) as client:
        assert_error(client.get("/v1/edits"), 401, "unauthenticated")
        answer = client.post("/v1/completions", json={"prompt": "hi"})
        assert answer.status_code == 401 and error_of(answer, "/v1/completions")["type"] == "unauthenticated"
        assert client.get("/healthz").status_code == client.get("/readyz").status_code == client.get("/metrics").status_code == 200


def test_off_checks_no_key(tiny_model_dir: Path, tmp_path: Path, shared_engine: Engine):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", auth=AuthMode.OFF)
    with running_app(settings, shared_engine) as client:
        make_key(client, "root", Scope.ADMIN)
        assert client.post("/v1/edits", json=FRANCE, headers={"X-Actor": "erin"}).status_code == 202
        events = client.get("/v1/audit", params={"action": "edit.submitted"}).json()["items"]
        assert [e["actor"] for e in events] == ["erin"]


def test_metrics_can_require_the_read_scope(tiny_model_dir: Path, tmp_path: Path, shared_engine: Engine):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", metrics_public=False)
    with running_app(settings, shared_engine) as client:
        assert client.get("/metrics").status_code == 200  # no key exists yet: a loopback client
        reader, writer = make_key(client, "prometheus", Scope.READ), make_key(client, "ci", Scope.EDITS_WRITE)
        assert_error(client.get("/metrics"), 401, "unauthenticated")
        assert_error(client.get("/metrics", headers=bearer(writer)), 403, "forbidden", "'read'")
        assert client.get("/metrics", headers=bearer(reader)).status_code == 200
        assert client.get("/healthz").status_code == 200
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert operation["security"] == [{"api_key": []}] and operation["x-lemoe-scope"] == "read"


def test_rate_limits_per_key_and_scope(tiny_model_dir: Path, tmp_path: Path, shared_engine: Engine):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", rate_limit_generate_per_min=2, rate_limit_edits_per_min=1)
    with running_app(settings, shared_engine) as client:
        one, two = make_key(client, "one", Scope.ADMIN), make_key(client, "two", Scope.GENERATE)
        assert [client.get("/v1/models", headers=bearer(one)).status_code for _ in range(2)] == [200, 200]

        limited = client.get("/v1/models", headers=bearer(one))

        assert limited.status_code == 429
        assert error_of(limited, "/v1/models")["type"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 30
        assert client.get("/v1/models", headers=bearer(two)).status_code == 200  # per key
        assert client.get("/v1/edits", headers=bearer(one)).status_code == 200  # read: not limited
        assert client.post("/v1/edits", json=FRANCE, headers=bearer(one)).status_code == 202  # its own bucket
        assert_error(client.post("/v1/edits", json=FRANCE, headers=bearer(one)), 429, "rate_limited", "LEMOE_RATE_LIMIT_EDITS_PER_MIN")


def test_the_document_names_each_operations_scope(settings: Settings):
    document = create_app(settings, load_in_background=True).openapi()
    assert document["components"]["securitySchemes"]["api_key"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["api_key"]["description"],
    }
    for (method, path), needs in ROUTE_ACCESS.items():
        if (method, path) in NOT_IN_DOCUMENT:
            assert method.lower() not in document["paths"].get(path, {}), path
            continue
        operation = document["paths"][path][method.lower()]
        if needs in (PUBLIC, METRICS):  # /metrics is open by default
            assert "security" not in operation and "x-lemoe-scope" not in operation, path
            continue
        assert operation["security"] == [{"api_key": []}], path
        assert operation["x-lemoe-scope"] == needs.value, path
        assert f"`{needs.value}`" in operation["description"], path
        assert {"401", "403"} <= set(operation["responses"]), path
        assert ("429" in operation["responses"]) == (needs in (Scope.GENERATE, Scope.EDITS_WRITE)), path


def test_token_buckets_refill_at_the_rate_and_burst_to_the_limit():
    now = [0.0]
    limiter = RateLimiter({Scope.GENERATE: 6, Scope.EDITS_WRITE: 0}, clock=lambda: now[0])
    assert [limiter.acquire("a", Scope.GENERATE) for _ in range(6)] == [None] * 6  # a burst of 6
    assert limiter.acquire("a", Scope.GENERATE) == 10  # 6 a minute: one every 10 s
    now[0] = 9.0
    assert limiter.acquire("a", Scope.GENERATE) == 1
    now[0] = 10.0
    assert limiter.acquire("a", Scope.GENERATE) is None
    assert limiter.acquire("b", Scope.GENERATE) is None  # per key
    assert all(limiter.acquire("a", Scope.EDITS_WRITE) is None for _ in range(100))  # 0: no limit
    assert limiter.acquire("a", Scope.READ) is None


def test_keys_are_not_read_before_the_migration(client: TestClient):
    access = client.app.state.access
    stage = [MIGRATING]
    migrating = AccessControl(runtime_of(client).settings, access.session_factory, stage=lambda: stage[0])
    client.app.state.access = migrating
    try:
        assert_error(client.get("/v1/edits"), 503, "not_ready", "migrating the database")
        assert client.get("/healthz").status_code == 200
        stage[0] = "ready"
        assert client.get("/v1/edits").status_code == 200
    finally:
        client.app.state.access = access


def test_start_up_says_who_may_call(tiny_model_dir: Path, tmp_path: Path, shared_engine: Engine, caplog: pytest.LogCaptureFixture):
    caplog.set_level("INFO", logger="app.api.auth")
    with running_app(tiny_settings(tiny_model_dir, tmp_path / "a"), shared_engine) as client:
        make_key(client, "first", Scope.READ)
    assert "no API key exists: serving loopback clients only" in caplog.text
    caplog.clear()
    with running_app(tiny_settings(tiny_model_dir, tmp_path / "a"), shared_engine):
        pass
    assert "API keys required (LEMOE_AUTH=auto)" in caplog.text
    caplog.clear()
    with running_app(tiny_settings(tiny_model_dir, tmp_path / "b", auth=AuthMode.OFF), shared_engine):
        pass
    assert [r.levelname for r in caplog.records if "LEMOE_AUTH=off" in r.getMessage()] == ["WARNING"]
