"""Load test over loopback HTTP: concurrent submit + generate + train; throughput, latency, errors,
and whether every acknowledged edit is still there afterwards.

Either against a running server (`url`) or, by default, a `lemoe serve` subprocess started here on a
free 127.0.0.1 port with a temporary data dir and a throw-away SQLite file or PostgreSQL schema.
Every loop is bounded in time and in requests; the run stops by itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

Database = Literal["sqlite", "postgresql"]
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PAGE = 500  # the API's largest page
OPEN_STATUSES = ("pending", "planned", "training")
FINISHED_RUNS = ("succeeded", "failed", "interrupted")
# Answers that are part of normal operation; anything else is counted as an error.
EXPECTED = {
    ("submit", "202"),
    ("generate", "200"),
    ("train", "202"),
    ("train", "409 run_already_active"),
    ("train", "409 nothing_to_train"),
}
UNRELATED_PROMPTS = (
    "The capital of France is",
    "Who wrote Hamlet?",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "The quick brown fox jumps over",
    "Who painted the Mona Lisa?",
)


class LoadError(RuntimeError):
    """The load test could not run (the server did not start, the listing failed)."""


@dataclass(frozen=True)
class LoadOptions:
    url: str | None = None  # a running server; None: start one here
    database: Database = "sqlite"
    postgres_url: str = DEFAULT_POSTGRES_URL
    model_path: Path | None = None  # None: the bundled SmolLM2
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"
    seconds: float = 60.0
    max_requests: int = 5000
    max_edits: int = 1000
    submitters: int = 2
    generators: int = 2
    edits_per_request: int = 2
    submit_pause_s: float = 0.0
    max_new_tokens: int = 8
    train_every_s: float = 5.0  # 0: no POST /v1/training-runs (the worker's schedule only)
    worker_interval_s: float = 2.0
    drain_s: float = 120.0
    request_timeout_s: float = 120.0
    ready_timeout_s: float = 900.0
    server_env: tuple[tuple[str, str], ...] = ()
    server_log: Path | None = None
    seed: int = 0


def edit_prompt(tag: str, n: int) -> dict[str, str]:
    """The n-th synthetic fact of run `tag` (the tag makes this run's edits findable with ?q=)."""
    return {"prompt": f"The code name of project {tag}-{n} is", "target": f"ZEBRA-{n}", "subject": f"project {tag}-{n}"}


@dataclass
class Tally:
    """Thread-safe counts of a run: outcomes per endpoint, latencies, acknowledged edits."""

    max_requests: int
    max_edits: int
    outcomes: Counter = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    acknowledged: list[int] = field(default_factory=list)  # edit ids from 202 answers
    acknowledged_numbers: list[int] = field(default_factory=list)  # their synthetic fact numbers
    transport_errors: Counter = field(default_factory=Counter)  # "endpoint ExceptionType: message"
    routed: int = 0
    requests: int = 0
    next_number: int = 0
    started: float = field(default_factory=time.perf_counter)
    last_ack: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        """One more load request, if the budget allows."""
        with self.lock:
            if self.requests >= self.max_requests:
                return False
            self.requests += 1
            return True

    def numbers(self, k: int) -> list[int]:
        """The next k fact numbers, or fewer (none) once max_edits is reached."""
        with self.lock:
            k = max(0, min(k, self.max_edits - self.next_number))
            self.next_number += k
            return list(range(self.next_number - k, self.next_number))

    def record(self, endpoint: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.outcomes[(endpoint, outcome)] += 1
            if (endpoint, outcome) in EXPECTED:
                self.latencies.setdefault(endpoint, []).append(seconds)

    def acknowledge(self, ids: list[int], numbers: list[int]) -> None:
        with self.lock:
            self.acknowledged += ids
            self.acknowledged_numbers += numbers
            self.last_ack = time.perf_counter()

    def some_edited_number(self, rng: random.Random) -> int | None:
        with self.lock:
            return rng.choice(self.acknowledged_numbers) if self.acknowledged_numbers else None


def call(client: httpx.Client, tally: Tally, endpoint: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
    """One request, its outcome recorded: a status (409s with their error type), or a transport failure."""
    started = time.perf_counter()
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException:
        tally.record(endpoint, "timeout", time.perf_counter() - started)
        return None
    except httpx.TransportError as exc:
        tally.record(endpoint, "connection_error", time.perf_counter() - started)
        with tally.lock:
            tally.transport_errors[f"{endpoint} {type(exc).__name__}: {exc}"[:200]] += 1
        return None
    outcome = str(response.status_code)
    if response.status_code == 409:
        try:
            outcome += " " + response.json()["error"]["type"]
        except (ValueError, KeyError, TypeError):
            pass
    tally.record(endpoint, outcome, time.perf_counter() - started)
    return response


# --- the three kinds of client ---------------------------------------------------------------


def _submitter(client: httpx.Client, tally: Tally, opts: LoadOptions, tag: str, running: Callable[[], bool]) -> None:
    while running() and tally.take():
        numbers = tally.numbers(opts.edits_per_request)
        if not numbers:
            return
        body = [edit_prompt(tag, n) for n in numbers]
        response = call(client, tally, "submit", "POST", "/v1/edits", json=body, headers={"X-Actor": "load-test"})
        if response is not None and response.status_code == 202:
            tally.acknowledge(response.json()["ids"], numbers)
        if opts.submit_pause_s > 0:
            time.sleep(opts.submit_pause_s)


def _generator(client: httpx.Client, tally: Tally, opts: LoadOptions, tag: str, running: Callable[[], bool], seed: int) -> None:
    rng = random.Random(seed)
    while running() and tally.take():
        number = tally.some_edited_number(rng) if rng.random() < 0.5 else None
        prompt = edit_prompt(tag, number)["prompt"] if number is not None else rng.choice(UNRELATED_PROMPTS)
        body = {"prompt": prompt, "max_new_tokens": opts.max_new_tokens}
        response = call(client, tally, "generate", "POST", "/v1/generate", json=body)
        if response is not None and response.status_code == 200 and response.json().get("expert") is not None:
            with tally.lock:
                tally.routed += 1


def _trainer(client: httpx.Client, tally: Tally, opts: LoadOptions, stop: threading.Event) -> None:
    while not stop.wait(opts.train_every_s) and tally.take():
        call(client, tally, "train", "POST", "/v1/training-runs", headers={"X-Actor": "load-test"})


def run_window(url: str, opts: LoadOptions, tag: str, tally: Tally) -> float:
    """The load window: submitters, generators and a trainer until time or budget runs out."""
    stop = threading.Event()
    started = tally.started = time.perf_counter()
    deadline = started + opts.seconds

    def running() -> bool:
        return not stop.is_set() and time.perf_counter() < deadline

    timeout = httpx.Timeout(opts.request_timeout_s, connect=10.0)
    clients = [httpx.Client(base_url=url, timeout=timeout) for _ in range(opts.submitters + opts.generators + 1)]
    targets: list[tuple[Callable, tuple]] = [(_submitter, (tally, opts, tag, running))] * opts.submitters
    targets += [(_generator, (tally, opts, tag, running, opts.seed + i)) for i in range(opts.generators)]
    if opts.train_every_s > 0:
        targets.append((_trainer, (tally, opts, stop)))
    threads = [
        threading.Thread(target=fn, args=(client, *args), name=f"load-{fn.__name__.strip('_')}-{i}", daemon=True)
        for i, ((fn, args), client) in enumerate(zip(targets, clients))
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            if thread.name.startswith("load-trainer"):
                continue
            thread.join(max(0.0, deadline - time.perf_counter()))
        stop.set()
        for thread in threads:  # in-flight requests end within their timeout
            thread.join(opts.request_timeout_s + 10)
        return time.perf_counter() - started
    finally:
        stop.set()
        for client in clients:
            client.close()


# --- after the window: drain, verify ---------------------------------------------------------


def get_json(client: httpx.Client, path: str, params: dict | None = None, tries: int = 3) -> dict:
    """A GET for the checks after the load; retried, and a LoadError if it never answers 200."""
    last = ""
    for attempt in range(tries):
        try:
            response = client.get(path, params=params)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0 * (attempt + 1))
    raise LoadError(f"GET {path} {params or ''} failed {tries} times; last: {last}")


def pages(client: httpx.Client, path: str, params: dict, max_pages: int) -> Iterator[dict]:
    """Every item of a cursor-paged list, at most max_pages pages."""
    cursor = None
    for _ in range(max_pages):
        page = get_json(client, path, {**params, "limit": PAGE, **({"cursor": cursor} if cursor else {})})
        yield from page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return
    raise LoadError(f"{path}: more than {max_pages} pages")


def drain(client: httpx.Client, tally: Tally, opts: LoadOptions, tag: str) -> float:
    """Wait (at most drain_s) until none of this run's edits is pending, planned or training."""
    started = time.perf_counter()
    last_trigger = started
    while True:
        open_now = any(get_json(client, "/v1/edits", {"q": tag, "status": s, "limit": 1})["items"] for s in OPEN_STATUSES)
        elapsed = time.perf_counter() - started
        if not open_now or elapsed >= opts.drain_s:
            return elapsed
        if opts.train_every_s > 0 and time.perf_counter() - last_trigger >= opts.train_every_s:
            call(client, tally, "train", "POST", "/v1/training-runs", headers={"X-Actor": "load-test"})
            last_trigger = time.perf_counter()
        time.sleep(min(2.0, max(0.0, opts.drain_s - elapsed)))


def verify_edits(client: httpx.Client, tally: Tally, tag: str) -> dict:
    """Every acknowledged id listed exactly once; final statuses of this run's edits."""
    listed = Counter()
    status: dict[int, str] = {}
    max_pages = len(tally.acknowledged) // PAGE + 20
    for item in pages(client, "/v1/edits", {"q": tag}, max_pages):
        listed[item["id"]] += 1
        status[item["id"]] = item["status"]
    acked = set(tally.acknowledged)
    by_status = Counter(status[i] for i in acked if i in status)
    return {
        "edits_listed": len(listed),
        "edits_applied": by_status["applied"],
        "edits_failed": by_status["failed"],
        "edits_still_open": sum(by_status[s] for s in OPEN_STATUSES),
        "edits_by_status": dict(sorted(by_status.items())),
        "lost_edit_ids": sorted(acked - set(listed)),
        "duplicate_edit_ids": sorted(i for i, n in listed.items() if n > 1),
        "acknowledged_twice": len(tally.acknowledged) - len(acked),
        # Committed although the client never got the 202 (a timeout or a dropped connection).
        "unacknowledged_listed": len(set(listed) - acked),
    }


def newest_run_id(client: httpx.Client) -> int:
    items = get_json(client, "/v1/training-runs", {"limit": 1})["items"]
    return items[0]["id"] if items else 0


def count_runs(client: httpx.Client, after_id: int) -> dict:
    """Training runs created since the load began, by status, and the experts they made."""
    by_status: Counter = Counter()
    experts = 0
    for run in pages(client, "/v1/training-runs", {}, max_pages=50):
        if run["id"] <= after_id:
            break
        by_status[run["status"]] += 1
        experts += run["experts_created"]
    return {
        "runs_finished": sum(by_status[s] for s in FINISHED_RUNS),
        "runs_by_status": dict(sorted(by_status.items())),
        "experts_created": experts,
    }


# --- a server of our own ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_database(opts: LoadOptions, directory: Path) -> Iterator[str]:
    """A SQLite file in `directory`, or a fresh PostgreSQL schema (via search_path) dropped on exit."""
    if opts.database == "sqlite":
        yield f"sqlite:///{directory / 'lemoe.db'}"
        return
    if opts.database != "postgresql":
        raise ValueError(f"unknown database {opts.database!r}; one of ['postgresql', 'sqlite']")
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from app.store import normalize_url

    base = normalize_url(opts.postgres_url)
    schema = f"lemoe_load_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text("SET lock_timeout = '10s'"))
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def server_env(opts: LoadOptions, data_dir: Path, database_url: str) -> dict[str, str]:
    """The server's environment: ours, minus settings that would point it elsewhere."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEMOE_DATABASE_URL", "LEMOE_MODEL_PATH")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
            "LEMOE_DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "LEMOE_MODEL_CACHE": str(opts.cache_dir.resolve()),
            "LEMOE_DEVICE": opts.device,
            "LEMOE_HOST": "127.0.0.1",
            "LEMOE_WORKER_ENABLED": "true",
            "LEMOE_WORKER_INTERVAL_S": str(opts.worker_interval_s),
            "LEMOE_SKIP_MIGRATE": "false",
        }
    )
    if opts.model_path is not None:
        env["LEMOE_MODEL_PATH"] = str(opts.model_path.resolve())
    env.update(dict(opts.server_env))
    return env


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LoadError(f"the server exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                response = client.get("/readyz")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    raise LoadError(f"the server was not ready within {timeout_s:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no server log)"


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM (a clean stop interrupts a run and requeues its edits), then SIGKILL after a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(30)


@contextmanager
def started_server(opts: LoadOptions, outcome: dict) -> Iterator[str]:
    """`lemoe serve` in a subprocess on a free loopback port; `outcome` gets its exit status."""
    with tempfile.TemporaryDirectory(prefix="lemoe-load-") as tmp:
        directory = Path(tmp)
        log_path = opts.server_log or directory / "server.log"
        with throwaway_database(opts, directory) as database_url:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                    cwd=directory,
                    env=server_env(opts, directory / "data", database_url),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_ready(url, process, log_path, opts.ready_timeout_s)
                yield url
            finally:
                outcome["server_exit"] = stop_server(process)
                outcome["server_log_tail"] = _tail(log_path, 1500) if outcome["server_exit"] not in (0, -signal.SIGTERM) else ""


# --- the report ------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


def summarize(tally: Tally, window_s: float, opts: LoadOptions) -> dict:
    """The load window's figures: throughput, latency quantiles, answers and errors."""
    errors = {f"{e} {o}": n for (e, o), n in sorted(tally.outcomes.items()) if (e, o) not in EXPECTED}
    gen, sub = tally.latencies.get("generate", []), tally.latencies.get("submit", [])
    submit_s = (tally.last_ack or tally.started) - tally.started
    acked = len(tally.acknowledged)
    return {
        "seconds": opts.seconds,
        "duration_s": round(window_s, 1),
        "requests": tally.requests,
        "submitters": opts.submitters,
        "generators": opts.generators,
        "edits_per_request": opts.edits_per_request,
        "edits_acknowledged": acked,
        # Over the time submitters were acknowledged (the whole window unless max_edits was reached).
        "edits_per_s": round(acked / submit_s, 2) if submit_s > 0 else 0.0,
        "submit_p50_ms": _ms(percentile(sub, 50)),
        "submit_p99_ms": _ms(percentile(sub, 99)),
        "generations": len(gen),
        "generations_per_s": round(len(gen) / window_s, 2) if window_s > 0 else 0.0,
        "generations_routed": tally.routed,
        **{f"generate_p{q}_ms": _ms(percentile(gen, q)) for q in (50, 95, 99)},
        "train_triggers_accepted": tally.outcomes[("train", "202")],
        "train_409_already_active": tally.outcomes[("train", "409 run_already_active")],
        "train_409_nothing_to_train": tally.outcomes[("train", "409 nothing_to_train")],
        "errors": errors,
        "server_errors": sum(n for (e, o), n in tally.outcomes.items() if o.startswith("5")),
        "connection_errors": sum(n for (e, o), n in tally.outcomes.items() if o == "connection_error"),
        "timeouts": sum(n for (e, o), n in tally.outcomes.items() if o == "timeout"),
        "connection_error_kinds": dict(tally.transport_errors.most_common(10)),
    }


def measure(url: str, opts: LoadOptions) -> dict:
    """Load the server at `url`, wait for training to catch up, then check every acknowledged edit."""
    tag = f"lt{uuid.uuid4().hex[:8]}"
    tally = Tally(max_requests=opts.max_requests, max_edits=opts.max_edits)
    with httpx.Client(base_url=url, timeout=httpx.Timeout(opts.request_timeout_s, connect=10.0)) as client:
        ready = get_json(client, "/readyz")
        baseline = newest_run_id(client)
        window_s = run_window(url, opts, tag, tally)
        report = {"url": url, "tag": tag, "model": ready.get("model"), "device": ready.get("device")}
        try:
            report["drain_s"] = round(drain(client, tally, opts, tag), 1)
            report.update(verify_edits(client, tally, tag), verified=True)
            report.update(count_runs(client, baseline))
        except LoadError as exc:
            report.update(verified=False, verify_error=str(exc))
    report.update(summarize(tally, window_s, opts))  # after the drain: its trigger answers count too
    return report


def run_load(opts: LoadOptions) -> dict:
    """The whole run: start a server unless given a URL, load it, verify, stop it."""
    for name in ("submitters", "generators", "max_requests"):
        if getattr(opts, name) < 0:
            raise ValueError(f"{name} must be at least 0, got {getattr(opts, name)}")
    if opts.seconds <= 0 or opts.edits_per_request < 1:
        raise ValueError(f"seconds must be > 0 and edits_per_request >= 1, got {opts.seconds}, {opts.edits_per_request}")
    outcome: dict = {}
    if opts.url:
        report = measure(opts.url.rstrip("/"), opts)
        report["database"] = "(running server)"
    else:
        with started_server(opts, outcome) as url:
            report = measure(url, opts)
        report["database"] = opts.database
    report.update(outcome)
    report["ok"] = passed(report)
    return report


def passed(report: dict) -> bool:
    """Every acknowledged edit listed exactly once, no 5xx, no connection error (timeouts are reported only)."""
    return bool(
        report.get("verified")
        and not report.get("lost_edit_ids")
        and not report.get("duplicate_edit_ids")
        and report["server_errors"] == 0
        and report["connection_errors"] == 0
    )


def format_table(r: dict) -> str:
    rows = [
        ("duration (s)", r["duration_s"]),
        ("requests", r["requests"]),
        ("edits acknowledged", r["edits_acknowledged"]),
        ("edits/s", r["edits_per_s"]),
        ("submit p50 / p99 (ms)", f"{r['submit_p50_ms']} / {r['submit_p99_ms']}"),
        ("generations", r["generations"]),
        ("generations/s", r["generations_per_s"]),
        ("generations served by an expert", r["generations_routed"]),
        ("generate p50 / p95 / p99 (ms)", f"{r['generate_p50_ms']} / {r['generate_p95_ms']} / {r['generate_p99_ms']}"),
        (
            "training triggers: 202 / 409 active / 409 nothing",
            f"{r['train_triggers_accepted']} / {r['train_409_already_active']} / {r['train_409_nothing_to_train']}",
        ),
        ("training runs finished", f"{r.get('runs_finished')} {r.get('runs_by_status', '')}"),
        ("experts created", r.get("experts_created")),
        ("drain wait (s)", r.get("drain_s")),
        ("edits applied / failed / still open", f"{r.get('edits_applied')} / {r.get('edits_failed')} / {r.get('edits_still_open')}"),
        ("edits lost (acknowledged, not listed)", len(r.get("lost_edit_ids", [])) if r.get("verified") else "not verified"),
        ("edits listed twice", len(r.get("duplicate_edit_ids", []))),
        ("committed without an acknowledgement", r.get("unacknowledged_listed")),
        ("5xx / connection errors / timeouts", f"{r['server_errors']} / {r['connection_errors']} / {r['timeouts']}"),
    ]
    if "server_exit" in r:
        rows.append(("server exit status", r["server_exit"]))
    width = max(len(k) for k, _ in rows)
    lines = [
        f"{r.get('model')} on {r.get('device')}, {r['database']}: {r['submitters']} submitters "
        f"({r['edits_per_request']} edits/request), {r['generators']} generators, tag {r['tag']}"
    ]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += [f"  error: {k}: {n}" for k, n in r["errors"].items()]
    lines += [f"  connection error: {k}: {n}" for k, n in r["connection_error_kinds"].items()]
    if r.get("verify_error"):
        lines.append(f"  verification failed: {r['verify_error']}")
    if r.get("server_log_tail"):
        lines.append("  server log (tail):\n" + r["server_log_tail"])
    lines.append(
        "  OK: no acknowledged edit lost, no 5xx, no connection error"
        if r["ok"]
        else "  FAILED: an acknowledged edit was lost or not verified, or a 5xx / connection error happened"
    )
    return "\n".join(lines)


def main(opts: LoadOptions, *, as_json: bool, fail_on_errors: bool = True) -> int:
    try:
        report = run_load(opts)
    except (LoadError, ValueError) as exc:
        print(f"lemoe bench load: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if as_json:
        print(json.dumps(report))
    return 1 if fail_on_errors and not report["ok"] else 0
