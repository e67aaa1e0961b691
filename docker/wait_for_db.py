#!/usr/bin/env python3
"""Wait until the database accepts connections, giving up after a bounded time.

Run by docker/entrypoint.sh before `lemoe migrate`, so a container started next to a PostgreSQL
that is still booting neither crashes nor migrates half-way. The URL comes from --url, else
DATABASE_URL, else LEMOE_DATABASE_URL (the app's own order); the time limit from --timeout, else
LEMOE_DB_WAIT_S, else 60 seconds.

Exit status: 0 reachable; 1 still unreachable when the time ran out; 2 a configuration error
(no URL, a malformed URL or time limit, a missing driver) that waiting cannot fix.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

DEFAULT_TIMEOUT_S = 60.0
EXIT_UNREACHABLE = 1
EXIT_CONFIG = 2
# One connection attempt never blocks longer than this (a host that drops packets).
MAX_CONNECT_TIMEOUT_S = 10


class ConfigError(Exception):
    """A problem that retrying cannot fix."""


def log(message: str) -> None:
    print(f"wait_for_db: {message}", file=sys.stderr, flush=True)


def parse_url(raw: str) -> URL:
    """Parse a database URL; a PostgreSQL URL naming no driver gets psycopg, the one installed.

    The same rule as app.store.db.normalize_url, repeated so that this helper needs only SQLAlchemy.
    """
    try:
        url = make_url(raw)
    except ArgumentError:
        # The URL itself is not echoed: it may hold a password.
        raise ConfigError(
            "cannot parse the database URL (not shown, it may hold a password); expected e.g. "
            "postgresql+psycopg://user:password@host:5432/dbname"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def parse_timeout(raw: str, *, source: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source} must be a number of seconds >= 0, got {raw!r}")
    return value


def describe(exc: BaseException) -> str:
    """The driver's own message on one line, without SQLAlchemy's background link."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(inner).split()) or type(inner).__name__


def try_connect(url: URL, *, connect_timeout_s: int) -> None:
    """Open one connection and run SELECT 1; raises on any failure."""
    connect_args = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = connect_timeout_s
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except ArgumentError as exc:  # includes NoSuchModuleError: unknown dialect or driver name
        raise ConfigError(f"no SQLAlchemy dialect for {url.drivername!r}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"the driver for {url.drivername!r} is not installed: {exc}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def wait_for_db(url: URL, *, timeout_s: float, interval_s: float = 1.0) -> bool:
    """Try to connect until it works or timeout_s has passed; log progress; True when reachable."""
    shown = url.render_as_string(hide_password=True)
    log(f"waiting up to {timeout_s:g}s for {shown}")
    start = time.monotonic()
    deadline = start + timeout_s
    attempts = 0
    last_error = ""
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        connect_timeout_s = max(2, min(MAX_CONNECT_TIMEOUT_S, math.ceil(remaining)))
        try:
            try_connect(url, connect_timeout_s=connect_timeout_s)
        except DBAPIError as exc:
            error = describe(exc)
            if error != last_error:
                log(f"not reachable yet: {error}")
            last_error = error
        else:
            log(f"{shown} is reachable (after {time.monotonic() - start:.1f}s, attempt {attempts})")
            return True
        now = time.monotonic()
        if now >= deadline:
            log(
                f"giving up: {shown} still not reachable after {now - start:.1f}s "
                f"({attempts} attempts; raise LEMOE_DB_WAIT_S to wait longer); "
                f"last error: {last_error}"
            )
            return False
        time.sleep(min(interval_s, deadline - now))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: $DATABASE_URL, else $LEMOE_DATABASE_URL)")
    parser.add_argument("--timeout", help="seconds to keep trying (default: $LEMOE_DB_WAIT_S, else 60)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between attempts")
    args = parser.parse_args(argv)
    try:
        raw_url = args.url or os.environ.get("DATABASE_URL") or os.environ.get("LEMOE_DATABASE_URL")
        if not raw_url:
            raise ConfigError("no database URL: set DATABASE_URL (or pass --url)")
        if args.timeout is not None:
            timeout_s = parse_timeout(args.timeout, source="--timeout")
        else:
            raw_timeout = os.environ.get("LEMOE_DB_WAIT_S", str(DEFAULT_TIMEOUT_S))
            timeout_s = parse_timeout(raw_timeout, source="LEMOE_DB_WAIT_S")
        reachable = wait_for_db(parse_url(raw_url), timeout_s=timeout_s, interval_s=args.interval)
    except ConfigError as exc:
        log(f"error: {exc}")
        return EXIT_CONFIG
    return 0 if reachable else EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
