"""`lemoe bench routing` and `lemoe bench experts` on the tiny model / small synthetic stacks."""

from __future__ import annotations

import json

import pytest

from app.benchmarks.expert_files import ExpertFilesOptions, run_expert_files
from app.benchmarks.expert_files import format_table as format_files_table
from app.benchmarks.routing import RoutingOptions, run_routing
from app.benchmarks.routing import format_table as format_routing_table
from app.cli import main as cli_main
from tests.api.support import tiny_model_dir  # noqa: F401  (fixture)


def test_routing_bench_reports_each_stack_size_beside_a_generation(tiny_model_dir, tmp_path):  # noqa: F811
    opts = RoutingOptions(anchors=(20, 100), repeats=1, max_new_tokens=4, model_path=tiny_model_dir, cache_dir=tmp_path, device="cpu")
    result = run_routing(opts)
    rows = result["rows"]
    assert [r["anchors"] for r in rows] == [32, 112]  # whole experts of 16
    assert [r["experts"] for r in rows] == [2, 7]
    for r in rows:
        assert r["search_ms"] > 0 and r["route_ms"] > 0 and r["generation_ms"] > 0
        # Of figures rounded to 0.01 ms and 0.1 ms: the share lies within what those roundings allow.
        search, generation = r["search_ms"], r["generation_ms"]
        low, high = 100 * max(search - 0.005, 0) / (generation + 0.05), 100 * (search + 0.005) / max(generation - 0.05, 1e-9)
        assert low - 0.005 <= r["search_pct"] <= high + 0.005
        assert r["same_text"]  # the synthetic anchors reach no prompt: the answer is the base model's
        assert r["key_mb_per_10k"] > 0 and r["index_mb_per_10k"] > 0
    table = format_routing_table(result)
    assert "search ms" in table and len(table.splitlines()) == 2 + len(rows) + 1


def test_expert_files_bench_compares_float32_and_float16_files(tmp_path):
    result = run_expert_files(ExpertFilesOptions(experts=3, edits_per_expert=4, hidden_size=32, expert_hidden=8, directory=tmp_path))
    f32, f16 = result["rows"]
    assert (f32["stored_as"], f16["stored_as"]) == ("float32", "float16")
    assert f32["edits"] == f16["edits"] == 12
    weights = 2 * 32 * 8 + 4 * 8  # down and up, and one code of 8 per edit
    assert f32["memory_weights_bytes_per_edit"] == f16["memory_weights_bytes_per_edit"] == weights * 4 // 4  # served in float32
    assert f16["weights_file_bytes_per_edit"] < f32["weights_file_bytes_per_edit"]
    assert f32["weights_file_bytes_per_edit"] - f16["weights_file_bytes_per_edit"] == pytest.approx(weights * 2 / 4, abs=1)
    assert len(list((tmp_path / "float16").iterdir())) == 3  # kept where asked
    assert "float16" in format_files_table(result)


def test_expert_files_bench_from_the_command_line(tmp_path, capsys):
    assert cli_main(["bench", "experts", "--experts", "2", "--edits-per-expert", "2", "--directory", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [r["experts"] for r in json.loads(out[-1])["rows"]] == [2, 2]
    with pytest.raises(SystemExit, match="at least 1"):
        cli_main(["bench", "experts", "--experts", "0"])


def test_routing_bench_worst_case_puts_every_anchor_above_the_floor(tiny_model_dir, tmp_path):  # noqa: F811
    opts = RoutingOptions(
        anchors=(40,),
        repeats=1,
        max_new_tokens=2,
        model_path=tiny_model_dir,
        cache_dir=tmp_path,
        device="cpu",
        every_anchor_a_candidate=True,
    )
    result = run_routing(opts)
    assert result["rows"][0]["anchors"] == 48 and result["rows"][0]["search_ms"] > 0
    assert "worst case" in format_routing_table(result)


def test_serve_bench_reports_each_concurrency_with_and_without_experts(tiny_model_dir, tmp_path):  # noqa: F811
    from app.benchmarks.serve import ServeOptions, run_serve
    from app.benchmarks.serve import format_table as format_serve_table

    opts = ServeOptions(
        concurrency=(1, 3), experts=(0, 5), requests=4, max_new_tokens=6, model_path=tiny_model_dir, cache_dir=tmp_path, device="cpu"
    )
    result = run_serve(opts)

    rows = result["rows"]
    assert [(r["experts"], r["anchors"], r["concurrency"]) for r in rows] == [(0, 0, 1), (0, 0, 3), (5, 80, 1), (5, 80, 3)]
    for r in rows:
        assert r["requests"] == 4 and 0 < r["tokens"] <= 4 * 6 and r["tokens_per_s"] > 0
        assert 0 < r["p50_s"] <= r["p95_s"] and r["routed"] == 0  # synthetic experts: no prompt reaches one
    lines = format_serve_table(result).splitlines()
    assert lines[1].split()[:4] == ["experts", "anchors", "clients", "requests"]
    assert len(lines) == 2 + len(rows) and lines[2].split()[5] == "1.00"  # one client is the reference
