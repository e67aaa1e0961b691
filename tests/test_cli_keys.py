"""`lemoe keys create | list | revoke`, `lemoe serve`'s refusal to bind beyond loopback without a
key, and the deployment's admin key (LEMOE_ADMIN_KEY[_FILE]), on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import cli, store
from app.config import Settings
from app.domain import AuthMode, Scope
from app.errors import InvalidInput
from app.services import keys as key_service
from app.services.runtime import Runtime
from app.startup import bind_refusal, is_loopback_host
from tests.pg import DATABASE_BACKENDS, temporary_database_url
from tests.test_cli import env

__all__ = ["env"]


@pytest.fixture(params=DATABASE_BACKENDS)
def sessions(request, env, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temporary_database_url(request.param, tmp_path) as url:
        env.setenv("DATABASE_URL", url)
        database = store.make_engine(url)
        yield store.make_session_factory(database)
        database.dispose()


def test_create_prints_the_secret_last_and_stores_its_hash(sessions, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert cli.main(["keys", "create", "ci-bot", "--scopes", "read, edits:write"]) == 0

    out = capsys.readouterr().out
    secret = out.rstrip("\n").splitlines()[-1]
    assert secret.startswith("lemoe_") and len(secret) >= 40
    assert "'ci-bot'" in out and "shown this once" in out
    assert secret not in caplog.text
    with sessions() as session:
        [key] = store.list_api_keys(session)
        assert (key.name, key.scopes, key.revoked_at) == ("ci-bot", ["edits:write", "read"], None)
        assert key.sha256 == key_service.secret_sha256(secret) and secret not in repr(key)
        principal = key_service.identify(session, secret=secret)
        assert principal is not None and principal.scopes == {Scope.READ, Scope.EDITS_WRITE}
        [event] = store.list_audit(session, action="key.created").items
        assert event.actor == "cli" and secret not in str(event.payload)


def test_create_refuses_unknown_scopes_and_taken_names(sessions, capsys):
    assert cli.main(["keys", "create", "ci", "--scopes", "read,root"]) == 1
    assert "unknown scope 'root'" in capsys.readouterr().err
    assert cli.main(["keys", "create", "ci", "--scopes", "read"]) == 0
    assert cli.main(["keys", "create", "ci", "--scopes", "admin"]) == 1
    assert "'ci' exists already" in capsys.readouterr().err
    assert cli.main(["keys", "create", "has space", "--scopes", "read"]) == 1
    assert "key name" in capsys.readouterr().err


def test_list_and_revoke(sessions, capsys):
    assert cli.main(["keys", "create", "ci", "--scopes", "generate"]) == 0
    secret = capsys.readouterr().out.splitlines()[-1]
    with sessions() as session:
        key_service.identify(session, secret=secret)  # a use: last_used_at is set

    assert cli.main(["keys", "revoke", "ci", "--actor", "ops"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert cli.main(["keys", "list"]) == 0

    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "SCOPES", "PREFIX", "CREATED", "LAST", "USED", "REVOKED"]
    name, scopes, prefix, created, last_used, revoked = row.split()
    assert (name, scopes) == ("ci", "generate") and secret.startswith(prefix.removesuffix("..."))
    assert created.endswith("Z") and last_used.endswith("Z") and revoked.endswith("Z")
    with sessions() as session:
        assert key_service.identify(session, secret=secret).revoked
        [event] = store.list_audit(session, action="key.revoked").items
        assert event.actor == "ops"
    assert cli.main(["keys", "revoke", "ci"]) == 1
    assert cli.main(["keys", "revoke", "nobody"]) == 1
    assert "no API key is named 'nobody'" in capsys.readouterr().err


def test_serve_refuses_a_public_interface_without_keys(sessions, env, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets=None: calls.append(self.config.host))

    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert "lemoe keys create admin --scopes admin" in capsys.readouterr().err
    assert cli.main(["serve", "--host", "127.0.0.1"]) == 0  # loopback: served, keys or not

    assert cli.main(["keys", "create", "admin", "--scopes", "admin"]) == 0
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 0
    assert calls == ["127.0.0.1", "0.0.0.0"]


def test_bind_refusal(tmp_path: Path, caplog):
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}")
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host) and bind_refusal(settings, host) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback_host(host)
        assert "refusing to listen on" in bind_refusal(settings, host), host  # no key (no table even)
    assert bind_refusal(settings.model_copy(update={"auth": AuthMode.ON}), "0.0.0.0") is None
    assert bind_refusal(settings.model_copy(update={"admin_key_file": tmp_path / "secret"}), "0.0.0.0") is None
    blank = Settings(_env_file=None, data_dir=tmp_path, database_url=settings.database_url, admin_key="", admin_key_file=" ")
    assert blank.admin_key is None and blank.admin_key_file is None  # as compose passes an unset variable on
    assert "refusing" in bind_refusal(blank, "0.0.0.0")
    with caplog.at_level(logging.WARNING):
        assert bind_refusal(settings.model_copy(update={"auth": AuthMode.OFF}), "0.0.0.0") is None
    assert "LEMOE_AUTH=off" in caplog.text


@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_the_deployments_admin_key_is_created_once(backend: str, tmp_path: Path, caplog):
    from app.metrics import Metrics
    from app.startup import start

    secret = key_service.new_secret()
    (tmp_path / "secret").write_text(secret + "\n")
    with temporary_database_url(backend, tmp_path) as url:
        settings = Settings(
            _env_file=None, data_dir=tmp_path / "data", database_url=url, admin_key_file=tmp_path / "secret", model_path=tmp_path / "none"
        )
        database = store.make_engine(url)
        sessions = store.make_session_factory(database)
        runtime = Runtime(settings=settings, database=database, session_factory=sessions, metrics=Metrics(sessions))
        caplog.set_level(logging.DEBUG)
        try:
            for _ in range(2):
                with pytest.raises(OSError):  # start-up goes on to load a model that is not there
                    start(runtime, engine=None, train=False)
            with sessions() as session:
                [key] = store.list_api_keys(session)
                assert (key.name, key.scopes) == ("admin", ["admin"])
                assert key_service.identify(session, secret=secret) is not None
            assert secret not in caplog.text

            with sessions() as session, pytest.raises(InvalidInput, match="at least 32 characters"):
                key_service.ensure_admin_key(session, name="admin", secret="short")
        finally:
            database.dispose()
