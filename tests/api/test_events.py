"""GET /v1/events: audit events as they commit (from any process on the database), run progress,
filters, resuming, keep-alives; and a server with a stream open still stops promptly."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from app.api.routes import events as events_route
from app.domain import RunTrigger, Scope
from app.main import create_app
from app.services import keys as key_service
from app.services import training
from tests.api.live import DEADLINE_S, live_server, wait_for
from tests.api.support import FOX, FRANCE, assert_error, running_app, runtime_of, submit, worker_for


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str | None
    data: str | None
    comment: str | None = None

    def json(self) -> dict:
        assert self.data is not None
        return json.loads(self.data)


def parse(lines: Iterator[str]) -> Iterator[Sse]:
    """Server-sent events (and comments) from the lines of a stream, as an EventSource reads them."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if fields:
                yield Sse(fields.get("id"), fields.get("event"), fields.get("data"))
            fields = {}
        elif line.startswith(":"):
            yield Sse(None, None, None, comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    if fields:
        yield Sse(fields.get("id"), fields.get("event"), fields.get("data"))


def read(client, **params) -> list[Sse]:
    """A whole stream that ends by itself (`limit` or `timeout_s`)."""
    headers = params.pop("headers", {})
    with client.stream("GET", "/v1/events", params=params, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(parse(response.iter_lines()))


def events_only(items: list[Sse]) -> list[Sse]:
    return [e for e in items if e.comment is None]


def test_each_audit_event_is_streamed_as_get_audit_shows_it(db_client):
    [edit_id] = submit(db_client, FRANCE, actor="alice")
    worker_for(db_client).run_once(RunTrigger.MANUAL, "bob")
    log = db_client.get("/v1/audit", params={"order": "asc"}).json()["items"]

    streamed = events_only(read(db_client, after=0, limit=len(log)))

    assert [e.id for e in streamed] == [str(e["id"]) for e in log]
    assert [e.event for e in streamed] == [e["action"] for e in log]
    assert [e.json() for e in streamed] == log
    assert "edit.applied" in [e.event for e in streamed]
    # Filtered to one edit; resumed after an id (the header wins over ?after=).
    mine = events_only(read(db_client, after=0, edit_id=edit_id, limit=3))
    assert [e.event for e in mine] == ["edit.submitted", "edit.planned", "edit.applied"]
    resumed = events_only(read(db_client, after=0, limit=1, headers={"Last-Event-ID": mine[1].id}))
    assert resumed[0].id == str(int(mine[1].id) + 1)
    # A Last-Event-ID that is no audit id (another server's) is ignored: ?after= decides.
    assert events_only(read(db_client, after=0, limit=1, headers={"Last-Event-ID": "seven"}))[0].id == "1"
    only = events_only(read(db_client, after=0, action="expert.registered", limit=1))
    assert only[0].json()["payload"]["check"]["edits"] == 1


def test_a_stream_ends_at_its_timeout_and_sends_keep_alives(settings, shared_engine):
    with running_app(settings.model_copy(update={"events_keepalive_s": 1.0}), shared_engine) as client:
        started = time.monotonic()
        items = read(client, timeout_s=2.5)
        took = time.monotonic() - started

    assert events_only(items) == []  # nothing happened after it started
    assert any(e.comment and e.comment.startswith("ping") for e in items)
    assert 2.0 <= took < DEADLINE_S


@pytest.mark.parametrize(
    "params, headers, needle",
    [
        ({"after": -1}, {}, "after"),
        ({"limit": 0}, {}, "limit"),
        ({"timeout_s": 0}, {}, "timeout_s"),
        ({"action": "edit.exploded"}, {}, "action"),
    ],
)
def test_bad_parameters_are_a_422_before_any_stream(client, params, headers, needle):
    response = client.get("/v1/events", params=params, headers=headers)
    assert_error(response, 422, None, needle)


def test_a_client_waits_for_applied_while_another_app_on_the_database_trains(db_settings, shared_engine, monkeypatch):
    """The stream is served by one app; the edit is trained by another (a trainer replica): the
    client sees its edit applied and the run's progress without polling."""
    monkeypatch.setattr(training, "PROGRESS_WRITE_INTERVAL_S", 0.0)  # every step is written
    # The run may train faster than the stream polls: after its first write of a step done it
    # waits until the stream has delivered such progress (a run that finished unseen shows none).
    progress_seen = threading.Event()
    write_progress = training.record_progress

    def record_progress_then_wait(*args, **kwargs) -> None:
        write_progress(*args, **kwargs)
        if (kwargs.get("steps_done") or 0) >= 1:
            progress_seen.wait(DEADLINE_S)

    monkeypatch.setattr(training, "record_progress", record_progress_then_wait)
    settings = db_settings.model_copy(update={"events_poll_interval_s": 0.1, "edits_per_expert": 1, "planning": False})
    with live_server(create_app(settings, engine=shared_engine)) as server, running_app(settings, shared_engine) as trainer:
        [first, second] = submit(trainer, FRANCE, FOX)
        [newest] = trainer.get("/v1/audit", params={"limit": 1}).json()["items"]
        seen: list[Sse] = []
        opened = threading.Event()

        def follow() -> None:
            with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as http:
                with http.stream("GET", "/v1/events", params={"edit_id": second, "after": newest["id"]}) as response:
                    opened.set()
                    for event in parse(response.iter_lines()):
                        seen.append(event)
                        if event.event == "training_run.progress" and (event.json()["steps_done"] or 0) >= 1:
                            progress_seen.set()
                        if event.event in ("edit.applied", "edit.failed"):
                            return  # the client hangs up

        reader = threading.Thread(target=follow)
        reader.start()
        assert opened.wait(DEADLINE_S)
        run_id = worker_for(trainer).run_once()
        reader.join(DEADLINE_S)
        assert not reader.is_alive()

    actions = [e.event for e in events_only(seen)]
    assert actions[-1] == "edit.applied" and "edit.planned" in actions
    assert all(e.json()["edit_id"] == second for e in events_only(seen) if e.id is not None)
    progress = [e.json() for e in seen if e.event == "training_run.progress"]
    assert progress and {p["id"] for p in progress} == {run_id}
    assert all(p["status"] == "running" and p["edits_total"] == 2 for p in progress)
    # steps_planned is null only before the run has planned its batches.
    assert max(p["steps_done"] for p in progress) >= 1 and progress[-1]["steps_planned"] >= progress[-1]["steps_done"]
    assert first != second


def test_a_stream_stops_reading_the_log_when_its_client_hangs_up(settings, shared_engine, monkeypatch):
    from app.services.events import EventFeed

    polls: list[float] = []
    original = EventFeed.poll

    def counted(self):
        polls.append(time.monotonic())
        return original(self)

    monkeypatch.setattr(EventFeed, "poll", counted)
    app = create_app(settings.model_copy(update={"events_poll_interval_s": 0.05}), engine=shared_engine)
    with live_server(app) as server:
        with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as http:
            with http.stream("GET", "/v1/events") as response:
                assert response.status_code == 200
                wait_for(lambda: len(polls) >= 3, "the stream to poll")
        # Hung up: polling stops (it would go on 20 times a second otherwise).

        def settled() -> bool:
            seen = len(polls)
            time.sleep(0.5)
            return len(polls) == seen

        wait_for(settled, "the stream to stop polling after the hang-up")


def test_the_server_stops_promptly_with_a_stream_open(tiny_model_dir, tmp_path):
    from tests.test_restart import Server

    server = Server(tiny_model_dir, tmp_path / "data", tmp_path / "server.log", LEMOE_WORKER_ENABLED="false")
    client = server.start()
    ended = threading.Event()
    lines: list[str] = []

    def follow() -> None:
        try:
            with client.stream("GET", "/v1/events", params={"after": 0}) as response:
                for line in response.iter_lines():
                    lines.append(line)
        except httpx.HTTPError:
            pass
        ended.set()

    reader = threading.Thread(target=follow, daemon=True)
    try:
        submit_response = client.post("/v1/edits", json=FRANCE)
        assert submit_response.status_code == 202
        reader.start()
        wait_for(lambda: any(line.startswith("event: edit.submitted") for line in lines), "the stream to deliver the log")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(DEADLINE_S)
        took = time.monotonic() - started
    finally:
        if server.process.poll() is None:
            server.process.kill()
        client.close()

    assert code in (0, -signal.SIGTERM), server.log.read_text()[-3000:]
    # uvicorn would wait up to its 30 s graceful timeout for an open response: the stream ended.
    assert took < 20, server.log.read_text()[-3000:]
    assert ended.wait(DEADLINE_S)
    assert "Application shutdown complete" in server.log.read_text()


def test_a_stream_ends_when_its_key_is_revoked(db_client, monkeypatch):
    """A stream checks its key again while it runs: revoking the key ends it with a
    stream.key_revoked event, long before its timeout."""
    monkeypatch.setattr(events_route, "KEY_RECHECK_S", 0.2)
    factory = runtime_of(db_client).session_factory
    with factory() as session:
        secret = key_service.create_key(session, name="watcher", scopes=[Scope.READ], actor="test").secret
    started = time.monotonic()
    with db_client.stream("GET", "/v1/events", params={"timeout_s": 600}, headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.status_code == 200, response.read()
        with factory() as session:
            key_service.revoke_key(session, name="watcher", actor="test")
        items = events_only(list(parse(response.iter_lines())))

    assert time.monotonic() - started < DEADLINE_S
    assert [e.event for e in items][-1] == "stream.key_revoked"
    assert "'watcher' was revoked" in items[-1].json()["detail"]
    # The key is refused from then on, like every revoked key.
    assert_error(db_client.get("/v1/events", headers={"Authorization": f"Bearer {secret}"}), 401, "unauthenticated", "revoked")
