"""`lemoe bench ...` sub-commands."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from app.lemoe.config import LemoeConfig


def _data_arguments(parser: argparse.ArgumentParser, edits_help: str = "T: how many records to edit in sequence") -> None:
    parser.add_argument("--data", type=Path, required=True, help="a ZsRE- or CounterFact-format JSON file")
    parser.add_argument("--format", choices=["zsre", "counterfact"], required=True)
    parser.add_argument("--edits", type=int, required=True, help=edits_help)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="a local HF model dir (default: bundled SmolLM2)")
    parser.add_argument("--cache-dir", type=Path, default=Path("lemoe-data/model-cache"), help="the converted bundled model's cache")
    parser.add_argument("--device", default="auto")


def add_bench_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark and print a table")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)
    q = kinds.add_parser("quality", help="lifelong editing quality (Rel/Gen/Loc + exact match)")
    _data_arguments(q)
    q.add_argument("--batch-size", type=int, default=16, help="edits per expert")
    q.add_argument("--no-planning", action="store_true", help="arrival order instead of clustering")
    q.add_argument("--no-gate", action="store_true", help="always route to the nearest expert")
    q.add_argument("--no-subject-keys", action="store_true", help="route by sentence keys only (ignore the records' subjects)")
    q.add_argument("--base", action="store_true", help="score the unedited model only")
    q.add_argument(
        "--check", action="store_true", help="run the server's check before going live on each expert; report its figures and cost"
    )
    q.add_argument(
        "--score-sample",
        type=int,
        metavar="N",
        help="score a seeded sample of N of the T edited records (all are trained); default: all",
    )
    _model_arguments(q)
    q.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an editor setting, e.g. --set layer=20 --set max_steps=40"
    )
    q.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    q.set_defaults(handler=_run_quality)

    lo = kinds.add_parser("locality", help="greedy answers to probes built from the data: edited facts, other subjects, other questions")
    _data_arguments(lo)
    lo.add_argument(
        "--subjects",
        choices=["none", "given"],
        default="none",
        help="send each edit's subject as a client would (given) or not (none, the default: most clients send none)",
    )
    lo.add_argument("--batch-size", type=int, default=16, help="edits per expert")
    lo.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens generated per probe")
    lo.add_argument(
        "--forms",
        nargs="+",
        choices=["plain", "chat"],
        default=["plain"],
        help="ask every probe as the bare prompt (plain) and/or as the user turn of the model's chat template (chat)",
    )
    lo.add_argument(
        "--kinds", nargs="+", default=None, metavar="KIND", help="only these probe kinds (default: all; e.g. edit paraphrase loc)"
    )
    lo.add_argument(
        "--other-subjects",
        type=Path,
        default=None,
        metavar="FILE",
        help="another file of the same format whose unedited subjects also fill the other-subject probes "
        "(at large T the data file has none left: ZsRE dev at --edits 600) and whose questions make the "
        "subject+new-q probes (questions no edit asks)",
    )
    lo.add_argument(
        "--probes-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write every probe's answer to FILE, one JSON line each (its prompt, output, whether it counts, "
        "the expert and edit that answered)",
    )
    _model_arguments(lo)
    lo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an editor setting")
    lo.add_argument(
        "--routing-only",
        action="store_true",
        help="no training, no generation: plan the edits, make their keys and report which probes reach "
        "an expert (its own, for edited probes), once per --relation-thresholds (or --span-thresholds) value",
    )
    lo.add_argument(
        "--relation-thresholds",
        nargs="+",
        default=None,
        metavar="T",
        help="with --routing-only: relation thresholds to compare ('none': no relation check)",
    )
    lo.add_argument(
        "--span-thresholds",
        nargs="+",
        default=None,
        metavar="T",
        help="with --routing-only: subject span thresholds to compare ('none': no span check), at the (first) relation threshold",
    )
    lo.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    lo.set_defaults(handler=_run_locality)

    g = kinds.add_parser("gate", help="how well routing queries separate paraphrases from unrelated prompts")
    _data_arguments(g)
    g.add_argument("--layers", type=int, nargs="*", default=[], help="route layers to compare (default: the adaptor layer)")
    g.add_argument("--poolings", nargs="*", default=["mean", "last", "mean_last"], choices=["mean", "last", "mean_last", "subject"])
    g.add_argument(
        "--subject-floors",
        type=float,
        nargs="*",
        default=[],
        help="with --poolings subject: sentence floors to compare (default: the editor's)",
    )
    _model_arguments(g)
    g.add_argument("--json", action="store_true")
    g.set_defaults(handler=_run_gate)

    ld = kinds.add_parser("load", help="concurrent submit + generate + train over loopback HTTP: edits/s, latency, errors, lost edits")
    ld.add_argument("--url", default=None, help="a running server (default: start `lemoe serve` on a free 127.0.0.1 port)")
    ld.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="store of the server started here: a temporary SQLite file or a throw-away PostgreSQL schema",
    )
    ld.add_argument("--postgres-url", default=None, help="PostgreSQL for --database postgresql (a schema is created in it and dropped)")
    _model_arguments(ld)
    ld.add_argument("--seconds", type=float, default=60.0, help="length of the load window")
    ld.add_argument("--max-requests", type=int, default=5000, help="load requests at most (all clients together)")
    ld.add_argument("--max-edits", type=int, default=1000, help="edits submitted at most")
    ld.add_argument("--submitters", type=int, default=2, help="concurrent POST /v1/edits clients")
    ld.add_argument("--generators", type=int, default=2, help="concurrent POST /v1/generate clients")
    ld.add_argument("--edits-per-request", type=int, default=2)
    ld.add_argument("--submit-pause", type=float, default=0.0, help="seconds each submitter waits between requests (0: closed loop)")
    ld.add_argument("--max-new-tokens", type=int, default=8)
    ld.add_argument("--train-every", type=float, default=5.0, help="seconds between POST /v1/training-runs (0: none)")
    ld.add_argument("--worker-interval", type=float, default=2.0, help="LEMOE_WORKER_INTERVAL_S of the server started here")
    ld.add_argument("--drain-seconds", type=float, default=120.0, help="after the window, wait at most this long for open edits")
    ld.add_argument("--request-timeout", type=float, default=120.0)
    ld.add_argument("--ready-timeout", type=float, default=900.0, help="wait this long for the started server's /readyz")
    ld.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the server started here, e.g. --server-env LEMOE_TRAIN_MAX_STEPS=10",
    )
    ld.add_argument("--server-log", type=Path, default=None, help="keep the started server's log here")
    ld.add_argument("--seed", type=int, default=0)
    ld.add_argument("--no-fail", action="store_true", help="exit 0 even if an edit was lost or a 5xx / connection error happened")
    ld.add_argument("--json", action="store_true")
    ld.set_defaults(handler=_run_load)
    _add_serve(kinds)
    _add_routing(kinds)
    _add_expert_files(kinds)
    _add_training(kinds)


def _add_training(kinds) -> None:
    tr = kinds.add_parser("training", help="training cost per edit, editor settings compared in alternating runs")
    _data_arguments(tr, edits_help="records trained per run (the file's first ones)")
    tr.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL[:KEY=VALUE,...]",
        help="an editor setting to time (repeatable; default: one variant 'default'), e.g. --variant packed "
        "--variant padded:train_packing=false; the first is the baseline of the 'vs first' column",
    )
    tr.add_argument("--batch-size", type=int, default=16, help="edits per expert")
    tr.add_argument("--repeats", type=int, default=2, help="alternating runs per variant")
    tr.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own choice)")
    _model_arguments(tr)
    tr.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    tr.set_defaults(handler=_run_training)


def _run_training(args: argparse.Namespace) -> int:
    from app.benchmarks.training import TrainingOptions, Variant, main

    if args.edits < 1 or args.batch_size < 1 or args.repeats < 1:
        raise SystemExit("--edits, --batch-size and --repeats must be at least 1")
    variants = []
    for spec in args.variant or ["default"]:
        label, _, settings = spec.partition(":")
        if not label:
            raise SystemExit(f"--variant {spec!r}: expected LABEL[:KEY=VALUE,...]")
        variants.append(Variant(label, _parse_overrides([s for s in settings.split(",") if s], option=f"--variant {label}:")))
    if len({v.label for v in variants}) != len(variants):
        raise SystemExit(f"--variant labels must differ: {[v.label for v in variants]}")
    opts = TrainingOptions(
        data=args.data,
        format=args.format,
        edits=args.edits,
        variants=tuple(variants),
        batch_size=args.batch_size,
        repeats=args.repeats,
        threads=args.threads or None,
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    return main(opts, as_json=args.json)


def _add_expert_files(kinds) -> None:
    ex = kinds.add_parser("experts", help="bytes per edit on disk and in memory, and the time to load a stack of (synthetic) experts")
    ex.add_argument("--experts", type=int, default=625, help="experts in the stack (625 of 16: 10,000 edits)")
    ex.add_argument("--edits-per-expert", type=int, default=16)
    ex.add_argument("--directory", type=Path, default=None, help="write the files here and keep them (default: a temporary dir)")
    ex.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(handler=_run_expert_files)


def _run_expert_files(args: argparse.Namespace) -> int:
    from app.benchmarks.expert_files import ExpertFilesOptions, main

    if args.experts < 1 or args.edits_per_expert < 1:
        raise SystemExit("--experts and --edits-per-expert must be at least 1")
    opts = ExpertFilesOptions(experts=args.experts, edits_per_expert=args.edits_per_expert, directory=args.directory, threads=args.threads)
    return main(opts, as_json=args.json)


def _add_routing(kinds) -> None:
    rt = kinds.add_parser("routing", help="routing cost per request at many (synthetic) anchors, beside a greedy generation")
    rt.add_argument("--anchors", type=int, nargs="+", default=[1000, 10000, 100000], help="live anchors per run")
    rt.add_argument("--edits-per-expert", type=int, default=16)
    rt.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (the median is reported)")
    rt.add_argument("--max-new-tokens", type=int, default=32)
    _model_arguments(rt)
    rt.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    rt.add_argument(
        "--every-anchor-a-candidate",
        action="store_true",
        help="worst case: a sentence floor of -1, so every request compares its tokens with every subject key",
    )
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(handler=_run_routing)


def _run_routing(args: argparse.Namespace) -> int:
    from app.benchmarks.routing import RoutingOptions, main

    if min(args.anchors) < 1 or args.edits_per_expert < 1 or args.repeats < 1 or args.max_new_tokens < 1:
        raise SystemExit("--anchors, --edits-per-expert, --repeats and --max-new-tokens must be at least 1")
    opts = RoutingOptions(
        anchors=tuple(args.anchors),
        edits_per_expert=args.edits_per_expert,
        repeats=args.repeats,
        max_new_tokens=args.max_new_tokens,
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
        threads=args.threads,
        every_anchor_a_candidate=args.every_anchor_a_candidate,
    )
    return main(opts, as_json=args.json)


def _add_serve(kinds) -> None:
    sv = kinds.add_parser("serve", help="generation throughput and latency under concurrent clients, with and without many live experts")
    sv.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per level")
    sv.add_argument("--experts", type=int, nargs="+", default=[0, 1000], help="live (synthetic) experts per run")
    sv.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    sv.add_argument("--max-new-tokens", type=int, default=32)
    sv.add_argument("--max-batch", type=int, default=16, help="rows decoded together at most (LEMOE_MAX_BATCH_SIZE)")
    _model_arguments(sv)
    sv.add_argument("--json", action="store_true")
    sv.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from app.benchmarks.serve import ServeOptions, main

    if min(args.concurrency) < 1 or min(args.experts) < 0 or args.requests < 1 or args.max_new_tokens < 1 or args.max_batch < 1:
        raise SystemExit("--concurrency, --requests, --max-new-tokens and --max-batch must be at least 1; --experts at least 0")
    opts = ServeOptions(
        concurrency=tuple(args.concurrency),
        experts=tuple(args.experts),
        requests=args.requests,
        max_new_tokens=args.max_new_tokens,
        max_batch=args.max_batch,
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    return main(opts, as_json=args.json)


def _parse_overrides(pairs: list[str], option: str = "--set") -> LemoeConfig:
    config = LemoeConfig()
    defaults = config.to_dict()
    changes = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"{option} {pair!r}: expected KEY=VALUE with KEY one of {sorted(defaults)}")
        current = defaults[key]
        if raw.lower() in ("none", "null"):
            changes[key] = None
        elif isinstance(current, bool):
            changes[key] = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, int) or key in ("layer", "route_layer"):
            changes[key] = int(raw)
        elif isinstance(current, float) or (current is None and _is_number(raw)):  # None: an optional number
            changes[key] = float(raw)
        else:
            changes[key] = raw
    return replace(config, **changes)


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _run_quality(args: argparse.Namespace) -> int:
    from app.benchmarks.quality import QualityOptions, main

    if args.edits < 1:
        raise SystemExit("--edits must be at least 1")
    if args.score_sample is not None and args.score_sample < 1:
        raise SystemExit("--score-sample must be at least 1")
    opts = QualityOptions(
        data=args.data,
        format=args.format,
        edits=args.edits,
        batch_size=args.batch_size,
        planning=not args.no_planning,
        gate=not args.no_gate,
        base_only=args.base,
        check=args.check,
        score_sample=args.score_sample,
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
        config=_parse_overrides(args.set),
    )
    if args.no_subject_keys:
        opts = replace(opts, config=replace(opts.config, subject_keys=False))
    return main(opts, as_json=args.json)


def _run_locality(args: argparse.Namespace) -> int:
    from app.benchmarks.locality import LocalityOptions, main

    if args.edits < 1:
        raise SystemExit("--edits must be at least 1")
    opts = LocalityOptions(
        data=args.data,
        format=args.format,
        edits=args.edits,
        subjects=args.subjects,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        forms=tuple(dict.fromkeys(args.forms)),
        kinds=None if args.kinds is None else tuple(args.kinds),
        other_subjects=args.other_subjects,
        probes_out=args.probes_out,
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
        config=_parse_overrides(args.set),
    )
    if args.relation_thresholds and not args.routing_only:
        raise SystemExit("--relation-thresholds needs --routing-only (use --set relation_threshold=T for a full run)")
    if args.probes_out and args.routing_only:
        raise SystemExit("--probes-out needs a full run (--routing-only generates nothing)")
    if args.span_thresholds and not args.routing_only:
        raise SystemExit("--span-thresholds needs --routing-only (use --set subject_span_threshold=T for a full run)")
    if args.routing_only:
        from app.benchmarks.locality import main_routing

        thresholds = _thresholds("--relation-thresholds", args.relation_thresholds or [str(opts.config.relation_threshold)])
        spans = _thresholds("--span-thresholds", args.span_thresholds or [])
        return main_routing(opts, thresholds, spans, as_json=args.json)
    return main(opts, as_json=args.json)


def _thresholds(option: str, values: list[str]) -> list[float | None]:
    try:
        return [None if t.lower() == "none" else float(t) for t in values]
    except ValueError as exc:
        raise SystemExit(f"{option}: {exc}") from None


def _run_gate(args: argparse.Namespace) -> int:
    from app.benchmarks.gate import GateOptions, main

    opts = GateOptions(
        data=args.data,
        format=args.format,
        edits=args.edits,
        layers=tuple(args.layers),
        poolings=tuple(args.poolings),
        subject_floors=tuple(args.subject_floors),
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    return main(opts, as_json=args.json)


def _run_load(args: argparse.Namespace) -> int:
    from app.benchmarks.load import DEFAULT_POSTGRES_URL, LoadOptions, main

    env = []
    for pair in args.server_env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--server-env {pair!r}: expected KEY=VALUE")
        env.append((key, value))
    if args.url and (args.database != "sqlite" or args.model or args.server_env):
        raise SystemExit("--url loads a running server: --database, --model and --server-env do not apply")
    opts = LoadOptions(
        url=args.url,
        database=args.database,
        postgres_url=args.postgres_url or DEFAULT_POSTGRES_URL,
        model_path=args.model,
        cache_dir=args.cache_dir,
        device=args.device,
        seconds=args.seconds,
        max_requests=args.max_requests,
        max_edits=args.max_edits,
        submitters=args.submitters,
        generators=args.generators,
        edits_per_request=args.edits_per_request,
        submit_pause_s=args.submit_pause,
        max_new_tokens=args.max_new_tokens,
        train_every_s=args.train_every,
        worker_interval_s=args.worker_interval,
        drain_s=args.drain_seconds,
        request_timeout_s=args.request_timeout,
        ready_timeout_s=args.ready_timeout,
        server_env=tuple(env),
        server_log=args.server_log,
        seed=args.seed,
    )
    return main(opts, as_json=args.json, fail_on_errors=not args.no_fail)
