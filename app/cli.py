"""`lemoe serve | worker | migrate | experts | keys | bench`: the console script."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings, get_settings

log = logging.getLogger("app.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Once per process: one clear format on stderr."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    # Per-request lines come from the app's own access log (app.access: no query strings, which
    # may carry prompts); SQL and HTTP-client chatter stays quiet.
    for noisy in ("httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """HTTP first: the port opens (and "serving on ..." is logged) while the model still loads;
    /readyz says when it is ready. A start-up that fails stops the server: exit status 1."""
    import uvicorn

    from app.main import create_app
    from app.startup import bind_refusal

    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    refusal = bind_refusal(settings, host)
    if refusal is not None:
        print(f"lemoe: {refusal}", file=sys.stderr)
        return 2
    failed: list[BaseException] = []
    servers: list[uvicorn.Server] = []

    def stop(exc: BaseException) -> None:
        failed.append(exc)
        for server in servers:
            server.should_exit = True

    app = create_app(settings, on_start_failure=stop)
    # log_config=None: keep the logging configured above (one format for everything).
    # access_log=False: uvicorn's would log query strings; RequestObserverMiddleware logs each request.
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=30)
    servers.append(_server(config))
    servers[0].run()
    return 1 if failed else 0


def _server(config):
    """uvicorn's server, saying "serving on ..." once its port is open."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    log.info("serving on http://%s:%s (OpenAPI docs at /docs; /readyz answers 200 once the model is loaded)", host, port)

    return Server(config)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.store import migrate, normalize_url

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrate(url)
    log.info("database at head: %s", normalize_url(url).render_as_string(hide_password=True))
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    """Only the training schedule, no HTTP (the compose `trainer` service)."""
    return asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    from app import store
    from app.metrics import Metrics
    from app.services.runtime import Runtime, open_database
    from app.startup import start

    database = open_database(settings)
    session_factory = store.make_session_factory(database)
    runtime = Runtime(settings=settings, database=database, session_factory=session_factory, metrics=Metrics(session_factory))
    try:
        worker, recovered = await asyncio.to_thread(start, runtime, train=True)
        assert worker is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run_forever(recovered=recovered)
    finally:
        database.dispose()
    return 0


def _open_store(settings: Settings):
    """The database (not migrated here: `lemoe migrate` does that) and its session factory."""
    from app import store

    database = store.make_engine(settings.resolved_database_url)
    return database, store.make_session_factory(database)


def _database_error(exc: Exception) -> int:
    print(
        f"lemoe: cannot use the database ({type(exc).__name__}): is it reachable and migrated (lemoe migrate)?",
        file=sys.stderr,
    )
    return 2


def _experts_check(args: argparse.Namespace, settings: Settings) -> int:
    """One line per active expert (every expert with --all); exit 1 when any is broken."""
    from app.services import experts as expert_service

    database, sessions = _open_store(settings)
    try:
        with sessions() as session:
            checks = expert_service.check_experts(session, settings=settings, all_experts=args.all)
    except SQLAlchemyError as exc:
        return _database_error(exc)
    finally:
        database.dispose()
    for c in checks:
        verdict = "ok" if c.problem is None else "BROKEN"
        line = f"{verdict:<7} {c.expert_id:>5}  {c.name}  {c.status.value}  {c.path}"
        print(line if c.problem is None else f"{line}: {c.problem}")
    broken = [c for c in checks if c.problem is not None]
    which = "experts" if args.all else "active experts"
    print(f"{len(checks)} {which} checked, {len(broken)} broken", file=sys.stderr)
    if broken:
        print(
            "restore their files (config.json, weights.safetensors) from a backup, or take them out "
            "of the active set everywhere: lemoe experts quarantine NAME_OR_ID --reason '...'",
            file=sys.stderr,
        )
    return 1 if broken else 0


def _experts_quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from app.errors import ServiceError
    from app.services import experts as expert_service

    if (problem := _check_cli_actor(args.actor)) is not None:
        print(f"lemoe: {problem}", file=sys.stderr)
        return 1
    database, sessions = _open_store(settings)
    try:
        with sessions() as session:
            result = expert_service.quarantine_expert(session, name_or_id=args.expert, reason=args.reason, actor=args.actor)
    except (ServiceError, ValueError) as exc:  # nothing was committed
        print(f"lemoe: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        return _database_error(exc)
    finally:
        database.dispose()
    expert = result.expert
    print(
        f"expert {expert.name!r} (id {expert.id}) is quarantined: no process serves it; "
        f"edits rolled back: {result.changed_edit_ids or 'none'}. After restoring its files, "
        f"POST /v1/experts/{expert.id}/activate serves it again."
    )
    return 0


def _experts_prune(args: argparse.Namespace, settings: Settings) -> int:
    """One line per folder removed (or, with --dry-run, that would be)."""
    from app.services import expert_files

    if (problem := _check_cli_actor(args.actor)) is not None:
        print(f"lemoe: {problem}", file=sys.stderr)
        return 1
    if args.min_age_s < 0:
        print(f"lemoe: --min-age-s must be >= 0, got {args.min_age_s}", file=sys.stderr)
        return 1
    database, sessions = _open_store(settings)
    try:
        folders = expert_files.prune_orphaned_folders(
            sessions, settings=settings, min_age_s=args.min_age_s, dry_run=args.dry_run, actor=args.actor
        )
    except SQLAlchemyError as exc:
        return _database_error(exc)
    finally:
        database.dispose()
    verb = "would remove" if args.dry_run else "removed"
    for folder in folders:
        print(f"{verb} {folder.path}  (unchanged for {folder.age_s / 3600:.1f} h)")
    print(f"{len(folders)} orphaned expert folders {verb}", file=sys.stderr)
    return 0


def _check_cli_actor(actor: str) -> str | None:
    from app.store.models import ACTOR_LENGTH

    if not actor.strip() or len(actor) > ACTOR_LENGTH:  # the CLI's edge: the store trusts its callers
        return f"actor must be a non-empty string of at most {ACTOR_LENGTH} characters, got {actor!r}"
    return None


def _keys_run(settings: Settings, action) -> int:
    """Run `action(session)` on the database; a ServiceError is the user's (exit 1)."""
    from app.errors import ServiceError

    database, sessions = _open_store(settings)
    try:
        with sessions() as session:
            return action(session)
    except ServiceError as exc:
        print(f"lemoe: {exc.message}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        return _database_error(exc)
    finally:
        database.dispose()


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    """The secret is the last line of the output (and only there), so scripts can take it with `tail -n1`."""
    from app.services import keys as key_service

    if (problem := _check_cli_actor(args.actor)) is not None:
        print(f"lemoe: {problem}", file=sys.stderr)
        return 1

    def create(session) -> int:
        created = key_service.create_key(session, name=args.name, scopes=args.scopes.split(","), actor=args.actor)
        print(
            f"created API key {created.key.name!r} with the scopes {', '.join(created.key.scopes)}. Its secret follows, "
            "shown this once (only its hash is stored); clients send it as `Authorization: Bearer <secret>`:"
        )
        print(created.secret)
        return 0

    return _keys_run(settings, create)


def _when(at) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.services import keys as key_service

    def show(session) -> int:
        keys = key_service.list_keys(session)
        rows = [("NAME", "SCOPES", "PREFIX", "CREATED", "LAST USED", "REVOKED")]
        rows += [
            (k.name, ",".join(k.scopes), k.prefix + "...", _when(k.created_at), _when(k.last_used_at), _when(k.revoked_at)) for k in keys
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        active = sum(k.revoked_at is None for k in keys)
        print(f"{len(keys)} keys, {active} not revoked", file=sys.stderr)
        return 0

    return _keys_run(settings, show)


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.services import keys as key_service

    if (problem := _check_cli_actor(args.actor)) is not None:
        print(f"lemoe: {problem}", file=sys.stderr)
        return 1

    def revoke(session) -> int:
        key = key_service.revoke_key(session, name=args.name, actor=args.actor)
        print(f"API key {key.name!r} is revoked: every server refuses it from its next request on")
        return 0

    return _keys_run(settings, revoke)


def _bench_missing(args: argparse.Namespace, settings: Settings) -> int:
    print(
        "lemoe bench is not available in this installation: the benchmark module (app.benchmarks.cli) could not be imported.",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lemoe",
        description="lemoe-server: editing-as-a-service for language models (LEMoE experts).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the HTTP API (and the training worker)")
    serve.add_argument("--host", default=None, help="interface to bind (default: LEMOE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: LEMOE_PORT, 8000)")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(run=_migrate)

    worker = commands.add_parser("worker", help="run only the training schedule (no HTTP)")
    worker.set_defaults(run=_worker)

    experts = commands.add_parser("experts", help="inspect and repair expert files offline (no model load, no server)")
    experts_commands = experts.add_subparsers(dest="experts_command", required=True, metavar="ACTION")
    check = experts_commands.add_parser(
        "check",
        help="check each active expert's files against its database row (sha256, name, "
        "readable config and tensors); exit status 1 if any is broken",
    )
    check.add_argument("--all", action="store_true", help="check every expert, not only the active ones")
    check.set_defaults(run=_experts_check)
    quarantine = experts_commands.add_parser(
        "quarantine",
        help="take an expert out of the active set for every replica (status quarantined, its applied edits rolled_back, audited)",
    )
    quarantine.add_argument("expert", metavar="NAME_OR_ID", help="the expert's name or id")
    quarantine.add_argument("--reason", default="its files are broken", help="recorded in the audit log")
    quarantine.add_argument("--actor", default="cli", help="who does it, for the audit log (default: cli)")
    quarantine.set_defaults(run=_experts_quarantine)
    from app.services.expert_files import ORPHAN_MIN_AGE_S

    prune = experts_commands.add_parser(
        "prune",
        help="remove folders under the experts directory that no expert (of any status) names, left by a crash; audited",
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune.add_argument(
        "--min-age-s",
        type=float,
        default=ORPHAN_MIN_AGE_S,
        metavar="SECONDS",
        help=f"leave folders changed more recently: another process may be writing one (default: {ORPHAN_MIN_AGE_S:.0f})",
    )
    prune.add_argument("--actor", default="cli", help="who does it, for the audit log (default: cli)")
    prune.set_defaults(run=_experts_prune)

    from app.domain import Scope

    keys = commands.add_parser("keys", help="API keys: create (the secret is shown once), list, revoke")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_commands.add_parser(
        "create", help="create a key; its secret is the last line of the output, shown once (only its hash is stored)"
    )
    create.add_argument("name", metavar="NAME", help="the key's name: the actor of everything it does in the audit log")
    create.add_argument(
        "--scopes",
        required=True,
        metavar="SCOPE[,SCOPE...]",
        help=f"what it may do, comma-separated: {', '.join(s.value for s in Scope)} (admin implies every other)",
    )
    create.add_argument("--actor", default="cli", help="who creates it, for the audit log (default: cli)")
    create.set_defaults(run=_keys_create)
    listing = keys_commands.add_parser("list", help="every key: name, scopes, created, last used, revoked")
    listing.set_defaults(run=_keys_list)
    revoke = keys_commands.add_parser("revoke", help="revoke a key: refused from the next request on, by every process")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--actor", default="cli", help="who revokes it, for the audit log (default: cli)")
    revoke.set_defaults(run=_keys_revoke)

    try:
        from app.benchmarks.cli import add_bench_parser
    except ImportError as exc:  # the benchmark module is optional
        log.debug("benchmarks unavailable: %s", exc)
        bench = commands.add_parser("bench", help="benchmarks (not available in this installation)")
        bench.add_argument("rest", nargs=argparse.REMAINDER)
        bench.set_defaults(run=_bench_missing)
    else:
        add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"lemoe: invalid settings (environment or .env):\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if getattr(args, "run", None) is not None:
        return int(args.run(args, settings) or 0)
    # A subcommand added by another module (lemoe bench ...) carries its own handler.
    handler = getattr(args, "handler", None)
    if handler is None:
        print(f"lemoe: no handler for {args.command!r}", file=sys.stderr)
        return 2
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
