"""docker/entrypoint.sh and docker/wait_for_db.py, run as the container runs them (plain `sh`).

A fake `lemoe` first on PATH records each call, so no app, model or image is needed; the
PostgreSQL cases use the real server at LEMOE_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
WAIT_FOR_DB = REPO / "docker" / "wait_for_db.py"
POSTGRES_URL = os.environ.get("LEMOE_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Like tests/pg.py: the real-server cases fail loudly unless LEMOE_SKIP_POSTGRES=1.
needs_postgres = pytest.mark.skipif(
    os.environ.get("LEMOE_SKIP_POSTGRES", "").strip().lower() in ("1", "true", "yes"),
    reason="PostgreSQL tests disabled by LEMOE_SKIP_POSTGRES=1",
)
SERVE = ["lemoe", "serve", "--host", "0.0.0.0", "--port", "8000"]

FAKE_LEMOE = """#!/bin/sh
# Records "<pid> <args>" so a test can tell a child process from an exec.
printf '%s %s\\n' "$$" "$*" >> "$FAKE_LEMOE_LOG"
if [ "$1" = migrate ] && [ -n "${FAKE_MIGRATE_EXIT:-}" ]; then
    exit "$FAKE_MIGRATE_EXIT"
fi
exit 0
"""


def load_wait_for_db():
    spec = importlib.util.spec_from_file_location("wait_for_db", WAIT_FOR_DB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def closed_port() -> int:
    """A localhost port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_port(url: str, port: int, password: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(host="127.0.0.1", port=port)
    if password is not None:
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


class Run:
    """One run of the entrypoint: exit status, output, and the fake lemoe's calls."""

    def __init__(self, proc: subprocess.Popen, stdout: str, stderr: str, log: Path, elapsed: float):
        self.pid = proc.pid
        self.returncode = proc.returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed
        lines = log.read_text().splitlines() if log.exists() else []
        self.calls = [tuple(line.split(" ", 1)) for line in lines]  # (pid, args)

    @property
    def commands(self) -> list[str]:
        return [args for _, args in self.calls]


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment (no DATABASE_URL from the caller) with the fake lemoe first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lemoe = bin_dir / "lemoe"
    lemoe.write_text(FAKE_LEMOE)
    lemoe.chmod(0o755)
    # `python` is this interpreter (a wrapper, not a symlink, so a virtualenv stays active).
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_LEMOE_LOG": str(tmp_path / "lemoe-calls.log"),
    }


def run_entrypoint(env: dict[str, str], *command: str, timeout: float = 60) -> Run:
    # cwd elsewhere: the script must find its helper next to itself, not in the cwd.
    start = time.monotonic()
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *command],
        env=env,
        cwd=Path(env["HOME"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=timeout)
    return Run(proc, stdout, stderr, Path(env["FAKE_LEMOE_LOG"]), time.monotonic() - start)


def run_wait_for_db(env: dict[str, str], *args: str, timeout: float = 60):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(WAIT_FOR_DB), *args],
        env=env,
        cwd=Path(env["HOME"]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - start


# --- entrypoint.sh -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database_url",
    [None, "sqlite:///lemoe.db", "sqlite+pysqlite:////data/lemoe.db"],
    ids=["unset", "sqlite-relative", "sqlite-absolute"],
)
def test_entrypoint_without_postgres_migrates_then_execs_command(fake_env, database_url):
    if database_url is not None:
        fake_env["DATABASE_URL"] = database_url
    # A broken helper proves that SQLite never waits: calling it would fail the run.
    (Path(fake_env["HOME"]) / "bin" / "python").write_text("#!/bin/sh\nexit 97\n")

    run = run_entrypoint(fake_env, *SERVE)

    assert run.returncode == 0, run.stderr
    assert run.commands == ["migrate", "serve --host 0.0.0.0 --port 8000"]
    # exec: the command replaced the entrypoint's process instead of running as its child.
    assert int(run.calls[1][0]) == run.pid
    assert int(run.calls[0][0]) != run.pid
    assert "wait_for_db" not in run.stderr


def test_entrypoint_passes_command_output_and_status_through(fake_env):
    run = run_entrypoint(fake_env, "sh", "-c", "echo from-command; exit 7")

    assert run.commands == ["migrate"]
    assert run.stdout == "from-command\n"
    assert run.returncode == 7


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_entrypoint_skip_migrate_runs_only_the_command(fake_env, value):
    fake_env["LEMOE_SKIP_MIGRATE"] = value

    run = run_entrypoint(fake_env, *SERVE)

    assert run.returncode == 0, run.stderr
    assert run.commands == ["serve --host 0.0.0.0 --port 8000"]
    assert int(run.calls[0][0]) == run.pid
    assert "LEMOE_SKIP_MIGRATE" in run.stderr


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_entrypoint_skip_migrate_off_values_still_migrate(fake_env, value):
    fake_env["LEMOE_SKIP_MIGRATE"] = value

    run = run_entrypoint(fake_env, *SERVE)

    assert run.returncode == 0, run.stderr
    assert run.commands == ["migrate", "serve --host 0.0.0.0 --port 8000"]


def test_entrypoint_failed_migration_stops_before_the_command(fake_env):
    fake_env["FAKE_MIGRATE_EXIT"] = "3"

    run = run_entrypoint(fake_env, *SERVE)

    assert run.returncode == 3
    assert run.commands == ["migrate"]
    assert "lemoe migrate failed (exit 3)" in run.stderr
    assert "not starting: lemoe serve" in run.stderr


def test_entrypoint_without_command_fails_with_a_hint(fake_env):
    run = run_entrypoint(fake_env)

    assert run.returncode != 0
    assert run.commands == []
    assert "no command given" in run.stderr


@pytest.mark.parametrize("variable", ["DATABASE_URL", "LEMOE_DATABASE_URL"])
def test_entrypoint_unreachable_postgres_gives_up_after_wait(fake_env, variable):
    fake_env[variable] = with_port(POSTGRES_URL, closed_port(), password="s3cret-pw")
    fake_env["LEMOE_DB_WAIT_S"] = "2"

    run = run_entrypoint(fake_env, *SERVE, timeout=30)

    assert run.returncode != 0
    assert run.commands == []  # neither migrated nor started
    assert 1.5 <= run.elapsed < 10
    assert "giving up" in run.stderr and "not reachable after" in run.stderr
    assert "LEMOE_DB_WAIT_S" in run.stderr
    assert "s3cret-pw" not in run.stderr


@pytest.mark.postgres
@needs_postgres
def test_entrypoint_reachable_postgres_waits_then_migrates_and_execs(fake_env):
    fake_env["DATABASE_URL"] = POSTGRES_URL
    fake_env["LEMOE_DB_WAIT_S"] = "10"

    run = run_entrypoint(fake_env, *SERVE)

    assert run.returncode == 0, run.stderr
    assert "is reachable" in run.stderr
    assert run.commands == ["migrate", "serve --host 0.0.0.0 --port 8000"]
    assert int(run.calls[1][0]) == run.pid


# --- wait_for_db.py ------------------------------------------------------------------------


@pytest.mark.postgres
@needs_postgres
def test_wait_for_db_reachable_postgres_exits_zero_at_once(fake_env):
    fake_env["DATABASE_URL"] = POSTGRES_URL

    result, elapsed = run_wait_for_db(fake_env, "--timeout", "10")

    assert result.returncode == 0, result.stderr
    assert "is reachable" in result.stderr and "attempt 1)" in result.stderr
    assert elapsed < 10


@pytest.mark.postgres
@needs_postgres
def test_wait_for_db_url_without_driver_uses_psycopg(fake_env):
    # `postgresql://` means psycopg2 to SQLAlchemy, which the image does not ship.
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)

    result, _ = run_wait_for_db(fake_env, "--url", url, "--timeout", "10")

    assert result.returncode == 0, result.stderr
    assert "postgresql+psycopg://" in result.stderr


def test_wait_for_db_unreachable_exits_one_after_retrying(fake_env):
    fake_env["DATABASE_URL"] = with_port(POSTGRES_URL, closed_port(), password="s3cret-pw")
    fake_env["LEMOE_DB_WAIT_S"] = "2"

    result, elapsed = run_wait_for_db(fake_env, "--interval", "0.2")

    assert result.returncode == 1
    assert 1.5 <= elapsed < 10
    assert "giving up" in result.stderr
    attempts = re.search(r"\((\d+) attempts;", result.stderr)
    assert attempts and int(attempts.group(1)) >= 3, result.stderr  # retried, not one try
    assert "refused" in result.stderr.lower()  # the driver's own reason is passed on
    assert "s3cret-pw" not in result.stderr and "***" in result.stderr


class _Forwarder(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _forward_to(upstream: tuple[str, int]):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with socket.create_connection(upstream) as remote:

                def pump(src, dst):
                    try:
                        while data := src.recv(65536):
                            dst.sendall(data)
                    except OSError:
                        pass
                    finally:
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass

                back = threading.Thread(target=pump, args=(remote, self.request), daemon=True)
                back.start()
                pump(self.request, remote)
                back.join(timeout=10)

    return Handler


@pytest.mark.postgres
@needs_postgres
def test_wait_for_db_succeeds_once_postgres_comes_up(fake_env):
    """The database appears only after the helper has started failing: it keeps trying."""
    from sqlalchemy.engine import make_url

    target = make_url(POSTGRES_URL)
    port = closed_port()
    fake_env["DATABASE_URL"] = with_port(POSTGRES_URL, port)
    proc = subprocess.Popen(
        [sys.executable, str(WAIT_FOR_DB), "--timeout", "20", "--interval", "0.2"],
        env=fake_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Bring the database up only once the helper has reported a failed attempt (a fixed sleep
    # raced with a slow interpreter start on a loaded machine).
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if "not reachable yet" in line or not line:
            break
    assert proc.poll() is None, f"gave up or succeeded before the database existed: {seen}"
    server = _Forwarder(("127.0.0.1", port), _forward_to((target.host, target.port or 5432)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _, rest = proc.communicate(timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    stderr = "".join(seen) + rest

    assert proc.returncode == 0, stderr
    assert "not reachable yet" in stderr and "is reachable" in stderr


def test_wait_for_db_zero_timeout_tries_once(fake_env):
    fake_env["DATABASE_URL"] = with_port(POSTGRES_URL, closed_port())

    result, _ = run_wait_for_db(fake_env, "--timeout", "0")

    assert result.returncode == 1
    assert "(1 attempts;" in result.stderr


def test_wait_for_db_without_url_is_a_config_error(fake_env):
    result, _ = run_wait_for_db(fake_env)

    assert result.returncode == 2
    assert "no database URL: set DATABASE_URL" in result.stderr


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf"])
def test_wait_for_db_bad_timeout_is_a_config_error(fake_env, raw):
    fake_env["DATABASE_URL"] = POSTGRES_URL
    fake_env["LEMOE_DB_WAIT_S"] = raw

    result, _ = run_wait_for_db(fake_env)

    assert result.returncode == 2
    assert f"LEMOE_DB_WAIT_S must be a number of seconds >= 0, got {raw!r}" in result.stderr


def test_wait_for_db_malformed_url_fails_at_once_without_echoing_it(fake_env):
    fake_env["DATABASE_URL"] = "not a url with s3cret-pw"

    result, elapsed = run_wait_for_db(fake_env, "--timeout", "30")

    assert result.returncode == 2
    assert elapsed < 15  # not retried until the timeout
    assert "cannot parse the database URL" in result.stderr
    assert "s3cret-pw" not in result.stderr


def test_wait_for_db_unknown_driver_fails_at_once(fake_env):
    fake_env["DATABASE_URL"] = "nosuchdb+nosuchdriver://u@127.0.0.1/x"

    result, elapsed = run_wait_for_db(fake_env, "--timeout", "30")

    assert result.returncode == 2
    assert elapsed < 15
    assert "no SQLAlchemy dialect for 'nosuchdb+nosuchdriver'" in result.stderr


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgresql://u:p@h/d", "postgresql+psycopg"),
        ("postgres://u:p@h/d", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@h/d", "postgresql+psycopg"),
        ("postgresql+psycopg2://u:p@h/d", "postgresql+psycopg2"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_parse_url_gives_bare_postgres_the_installed_driver(raw, driver):
    url = load_wait_for_db().parse_url(raw)

    assert url.drivername == driver
    assert url.password == ("p" if "p@" in raw else None)
