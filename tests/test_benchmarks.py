"""The benchmark runners end to end on the tiny model and a three-record ZsRE-format file."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch

from app.benchmarks.datasets import BenchRecord, load_records
from app.benchmarks.gate import GateOptions, run_gate
from app.benchmarks.load import LoadOptions, passed, percentile, run_load
from app.benchmarks.load import format_table as format_load_table
from app.benchmarks.locality import LocalityOptions, build_probes, run_locality, select_edits, subject_first
from app.benchmarks.locality import format_table as format_locality_table
from app.benchmarks.quality import QualityOptions, edited_to_one_answer, format_table, run_quality
from app.lemoe.config import LemoeConfig
from app.lemoe.trainer import resolved_precision
from tests.api.support import TINY_GATE, tiny_model_dir  # noqa: F401  (fixture)
from tests.pg import DATABASE_BACKENDS, postgres_base_url, skip_if_postgres_disabled

RECORDS = [
    {
        "src": "The capital of France is",
        "alt": "Rome",
        "rephrase": "The capital of France is",
        "loc": "The quick brown fox jumps over",
        "loc_ans": "the lazy dog",
        "subject": "France",
    },
    {
        "src": "Who wrote the novel?",
        "alt": "Tolstoy",
        "rephrase": "Who wrote the novel?",
        "loc": "What is the name of the river?",
        "loc_ans": "Seine",
        "subject": "novel",
    },
    {
        "src": "The capital of Germany is",
        "alt": "Paris",
        "rephrase": "The capital of Germany is",
        "loc": "When was it founded?",
        "loc_ans": "1900",
        "subject": "Germany",
    },
]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(RECORDS))
    return path


def test_quality_run_reports_every_metric_and_the_subject_keys(tiny_model_dir, data, tmp_path):  # noqa: F811
    config = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, loss_threshold=0.05)
    opts = QualityOptions(
        data=data,
        format="zsre",
        edits=3,
        batch_size=2,
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
        config=config,
    )
    result = run_quality(opts)
    assert (result["edits"], result["experts"], result["subject_keyed_edits"]) == (3, 2, 3)
    # Paraphrase == prompt here, so every edit and "paraphrase" must reach its own expert.
    assert result["rel_routed_right"] == 1.0 and result["gen_routed_right"] == 1.0
    assert result["rel"] == 1.0 and result["gen"] == 1.0
    assert 0.0 <= result["loc"] <= 1.0 and result["s_per_edit"] > 0
    assert "edits with a subject key" in format_table(result)
    assert result["train_precision"] in ("full", "bfloat16") and "training precision" in format_table(result)
    # Every subject is edited to one answer here: the split's Gen is the whole Gen.
    assert result["one_answer"] == {"n": 3, "gen": result["gen"], "gen_exact": result["gen_exact"]}
    assert re.search(r"Gen / exact, subjects edited to one answer +1\.0 / [0-9.]+ \(n 3\)", format_table(result))


def test_a_subject_edited_to_two_answers_is_split_off():
    def rec(subject, target):
        return BenchRecord(f"Who is {subject}?", target, "r", "l", "a", subject=subject)

    edited = [rec("Acme", "Jane"), rec("acme ", "Bob"), rec("Beta", "Ann"), rec("Beta", "ann"), rec(None, "x")]
    scored = [*edited, rec("Gamma", "Zed")]
    assert edited_to_one_answer(scored, edited) == [False, False, True, True, True, True]


def test_quality_scores_a_sample_and_counts_the_stack_bytes(tiny_model_dir, data, tmp_path):  # noqa: F811
    config = LemoeConfig(layer=2, max_steps=2, warmup_loss=None)  # exactly max_steps steps at the limit
    opts = QualityOptions(
        data=data,
        format="zsre",
        edits=3,
        batch_size=2,
        score_sample=2,
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
        config=config,
    )
    result = run_quality(opts)
    assert (result["edits"], result["scored"]) == (3, 2)
    d, h = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"], config.expert_hidden
    # Two float32 experts (of 2 and 1 edits): down and up, and one code per edit.
    assert result["expert_weight_bytes"] == 4 * (2 * 2 * d * h + 3 * h)
    assert result["expert_key_bytes"] > 3 * d * 4  # at least the sentence anchors
    assert result["expert_bytes_per_edit"] == round((result["expert_weight_bytes"] + result["expert_key_bytes"]) / 3)
    assert result["peak_rss_mb"] > 0
    assert "2 of 3" in format_table(result)
    # Two steps cannot fit an edit: both experts end at the step limit, above the loss threshold.
    assert (result["steps_per_expert"], result["experts_at_step_limit"]) == (2, 2)
    assert result["loss_at_step_limit"]["p50"] > config.loss_threshold
    assert re.search(r"stopped by the step limit +2 \(final loss median", format_table(result))


def test_quality_scores_apart_the_locality_prompts_that_ask_another_edits_fact(tiny_model_dir, tmp_path):  # noqa: F811
    def record(prompt, subject, new, true, loc_prompt, loc_answer):
        return {
            "prompt": prompt,
            "subject": subject,
            "target_new": new,
            "ground_truth": true,
            "rephrase_prompt": prompt,
            "locality_prompt": loc_prompt,
            "locality_ground_truth": loc_answer,
        }

    records = [
        record("Toko Yasuda plays the", "Toko Yasuda", "piano", "guitar", "John Lennon performs on the", "guitar"),
        record("John Lennon plays the", "John Lennon", "violin", "guitar", "The instrument of Toko Yasuda is the", "guitar"),
        record("The capital of Peru is", "Peru", "Oslo", "Lima", "The quick brown fox jumps over", "the lazy dog"),
    ]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    opts = QualityOptions(
        data=path,
        format="counterfact",
        edits=3,
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
        config=LemoeConfig(layer=2, max_steps=2),
    )
    result = run_quality(opts)
    by_scope = result["loc_by_scope"]
    assert by_scope["another edit's fact"]["n"] == 2 and by_scope["no edited subject"]["n"] == 1
    assert 0.0 <= by_scope["another edit's fact"]["other_edit_rel"] <= 1.0
    # Loc outside the edits is the third record's Loc alone.
    assert result["loc_outside_edits"] == by_scope["no edited subject"]["loc"]
    assert "locality: another edit's fact" in format_table(result)


def test_quality_without_subject_keys_counts_none(tiny_model_dir, data, tmp_path):  # noqa: F811
    config = LemoeConfig(layer=2, max_steps=2, subject_keys=False)
    opts = QualityOptions(
        data=data, format="zsre", edits=2, model_path=tiny_model_dir, cache_dir=tmp_path / "cache", device="cpu", config=config
    )
    assert run_quality(opts)["subject_keyed_edits"] == 0


def test_gate_calibration_finds_each_identical_paraphrase_its_own_anchor(tiny_model_dir, data, tmp_path):  # noqa: F811
    opts = GateOptions(
        data=data,
        format="zsre",
        edits=3,
        layers=(1,),
        poolings=("mean", "subject"),
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
    )
    rows = run_gate(opts)
    assert [(r["route_layer"], r["pooling"]) for r in rows] == [(1, "subject"), (1, "subject+sentence>=0.4"), (1, "mean")]
    for row in rows:
        assert row["nearest_is_own"] == 1.0
        assert row["para@0.8"] == 1.0  # cosine 1 with its own anchor clears every threshold
        assert all(0.0 <= row[f"loc@{t}"] <= 1.0 for t in (0.4, 0.8))


def test_gate_calibration_compares_the_sentence_floors_asked_for(tiny_model_dir, data, tmp_path):  # noqa: F811
    opts = GateOptions(
        data=data,
        format="zsre",
        edits=3,
        layers=(1,),
        poolings=("subject",),
        subject_floors=(0.3, 2.0),
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
    )
    rows = run_gate(opts)
    assert [r["pooling"] for r in rows] == ["subject", "subject+sentence>=0.3", "subject+sentence>=2.0"]
    assert rows[1]["para@0.4"] == 1.0
    assert rows[2]["para@0.4"] == 0.0 and rows[2]["loc@0.4"] == 0.0  # no cosine reaches 2: nothing may fire


# --- lemoe bench load: a real server process on the tiny model ---------------------------------

LOAD_ENV = (
    ("LEMOE_GATE_THRESHOLD", str(TINY_GATE)),
    ("LEMOE_TRAIN_MAX_STEPS", "10"),
    ("LEMOE_STACK_POLL_INTERVAL_S", "0"),
    ("OMP_NUM_THREADS", "1"),
)


@pytest.mark.parametrize("database", DATABASE_BACKENDS)
def test_load_run_reports_every_figure_and_loses_no_edit(tiny_model_dir, tmp_path, database, capsys):  # noqa: F811
    skip_if_postgres_disabled(database)
    opts = LoadOptions(
        database=database,
        postgres_url=postgres_base_url().render_as_string(hide_password=False),
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
        seconds=3,
        max_requests=200,
        max_edits=20,
        submitters=1,
        generators=1,
        edits_per_request=2,
        max_new_tokens=4,
        train_every_s=1,
        worker_interval_s=0.5,
        drain_s=30,
        request_timeout_s=60,
        ready_timeout_s=120,
        server_env=LOAD_ENV,
        server_log=tmp_path / "server.log",
    )
    report = run_load(opts)

    assert report["verified"] is True, report.get("verify_error")
    assert report["edits_acknowledged"] > 0 and report["edits_acknowledged"] <= 20
    assert report["lost_edit_ids"] == [] and report["duplicate_edit_ids"] == []
    assert report["edits_listed"] == report["edits_acknowledged"] + report["unacknowledged_listed"]
    assert report["edits_applied"] + report["edits_failed"] + report["edits_still_open"] == report["edits_acknowledged"]
    assert report["generations"] > 0 and report["generate_p50_ms"] <= report["generate_p99_ms"]
    assert report["requests"] <= 200 and report["server_exit"] in (0, -signal.SIGTERM)
    assert report["runs_finished"] >= 1  # the worker's schedule and the triggers trained something
    assert report["ok"] == (report["server_errors"] == 0 and report["connection_errors"] == 0)
    for key in (
        "edits_per_s",
        "generate_p95_ms",
        "train_409_already_active",
        "train_409_nothing_to_train",
        "errors",
        "timeouts",
        "experts_created",
        "drain_s",
    ):
        assert key in report
    assert "edits lost (acknowledged, not listed)" in format_load_table(report)
    json.dumps(report)  # --json prints it


def test_load_verdict_fails_on_a_lost_edit_a_5xx_or_a_connection_error():
    good = {"verified": True, "lost_edit_ids": [], "duplicate_edit_ids": [], "server_errors": 0, "connection_errors": 0}
    assert passed(good)
    assert not passed({**good, "lost_edit_ids": [7]})
    assert not passed({**good, "server_errors": 1})
    assert not passed({**good, "connection_errors": 2})
    assert not passed({**good, "verified": False})


def test_load_percentiles_interpolate_like_numpy():
    xs = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert [percentile(xs, q) for q in (0, 50, 99, 100)] == pytest.approx([0.1, 0.3, 0.496, 0.5])
    assert percentile([], 50) is None


# --- bench locality -------------------------------------------------------------------------------
LOCALITY_RECORDS = [
    {
        "src": "The capital of France is",
        "alt": "Rome",
        "answers": ["Paris"],
        "rephrase": "France's capital is",
        "loc": "The quick brown fox jumps over",
        "loc_ans": "the lazy dog",
        "subject": "France",
    },
    {
        "src": "Who wrote the novel?",
        "alt": "Tolstoy",
        "answers": ["Austen"],
        "rephrase": "Who is the novel's author?",
        "loc": "What is the name of the river?",
        "loc_ans": "Seine",
        "subject": "novel",
    },
    {
        "src": "The language of France is",
        "alt": "Latin",
        "answers": ["French"],
        "rephrase": "France speaks",
        "loc": "When was it founded?",
        "loc_ans": "1900",
        "subject": "France",
    },
    {
        "src": "The capital city of France is",
        "alt": "Rome",
        "answers": ["Paris"],
        "rephrase": "France has its capital in",
        "loc": "Answer the question briefly.",
        "loc_ans": "Yes",
        "subject": "France",
    },
]


@pytest.fixture()
def locality_data(tmp_path: Path) -> Path:
    path = tmp_path / "zsre-subjects.json"
    path.write_text(json.dumps(LOCALITY_RECORDS))
    return path


@pytest.fixture()
def other_subjects_data(tmp_path: Path) -> Path:
    """A second file whose (unedited) subject fills the other-subject probes."""
    path = tmp_path / "zsre-other-subjects.json"
    path.write_text(json.dumps([{**LOCALITY_RECORDS[0], "src": "The capital of Spain is", "subject": "Spain"}]))
    return path


def test_subject_plus_other_question_probes_never_take_a_question_that_shares_a_content_word(tmp_path):
    # The only other record's question shares "capital" with the edit's: asked of France it would
    # be the edited fact in other words, so there is no such probe (there was one: the template's
    # words were read as single letters).
    same_relation = {**LOCALITY_RECORDS[0], "src": "The capital city of Spain is", "subject": "Spain", "rephrase": "Spain's capital is"}
    path = tmp_path / "zsre-two.json"
    path.write_text(json.dumps([LOCALITY_RECORDS[0], same_relation]))
    records = load_records(path, "zsre")
    assert not [p for p in build_probes(records, [0]) if p.kind == "subject+other-q"]
    other_relation = {**same_relation, "src": "The official language of Spain is"}
    path.write_text(json.dumps([LOCALITY_RECORDS[0], other_relation]))
    probes = [p for p in build_probes(load_records(path, "zsre"), [0]) if p.kind == "subject+other-q"]
    assert [p.prompt for p in probes] == ["The official language of France is"]


def test_subject_plus_new_question_probes_ask_another_files_questions_and_leave_the_others_as_they_were(tmp_path):
    other_relation = {**LOCALITY_RECORDS[0], "src": "The official language of Spain is", "subject": "Spain", "rephrase": "-"}
    path = tmp_path / "zsre-two.json"
    path.write_text(json.dumps([LOCALITY_RECORDS[0], other_relation]))
    records = load_records(path, "zsre")
    other_file = tmp_path / "zsre-other.json"
    asks_capital = {**other_relation, "src": "The capital of Italy is", "subject": "Italy"}  # the edit's relation: never drawn
    asks_anthem = {**other_relation, "src": "The national anthem of Peru is", "subject": "Peru"}
    other_file.write_text(json.dumps([asks_capital, asks_anthem]))
    plain = build_probes(records, [0])
    with_new = build_probes(records, [0], other_questions=load_records(other_file, "zsre"))
    assert [p.prompt for p in with_new if p.kind == "subject+new-q"] == ["The national anthem of France is"]
    assert [p for p in with_new if p.kind != "subject+new-q"] == plain
    assert not [p for p in plain if p.kind == "subject+new-q"]


def test_locality_holds_back_a_partner_and_builds_every_probe_from_the_data(locality_data):
    records = load_records(locality_data, "zsre")
    edited, held = select_edits(records, 2)
    # France asks three questions: its last one (record 3) is held back, so records 0 and 1 are edited.
    assert (edited, held) == ([0, 1], {3})
    probes = {(p.kind, p.record): p for p in build_probes(records, edited)}
    assert probes[("subject-first", 0)].prompt == "France: The capital of it is"
    assert probes[("subject-first", 1)].prompt == "novel: Who wrote the it?"
    assert probes[("same-fact", 0)].prompt == "The capital city of France is"  # same true answer: must be edited
    assert probes[("same-fact", 0)].target == "Rome"
    assert probes[("same-subject", 0)].prompt == "The language of France is"  # another answer: must stay
    # Every subject of the file is edited: no other-subject probe unless other subjects are given
    # (an edited one would ask an edited fact); an edited subject among those is passed over.
    assert not [p for p in probes.values() if p.kind == "other-subject"]
    given = {(p.kind, p.record): p for p in build_probes(records, edited, ["France", " Spain "])}
    assert given[("other-subject", 0)].prompt == "The capital of Spain is"
    assert given[("other-subject", 1)].prompt == "Who wrote the Spain?"
    assert probes[("subject+other-q", 0)].prompt == "Who wrote the France?"  # no content word shared with "capital"
    assert probes[("subject+other-q", 1)].prompt in {"The capital of novel is", "The language of novel is", "The capital city of novel is"}
    assert probes[("lower-case", 0)].prompt == "the capital of france is"
    assert probes[("loc", 1)].prompt == "What is the name of the river?"
    assert ("same-fact", 1) not in probes and ("same-subject", 1) not in probes  # the novel has one record
    # T larger than the records not held back: the held-back one is edited too, and its partner probes go.
    edited, held = select_edits(records, 4)
    assert (edited, held) == ([0, 1, 2, 3], set())
    assert not [p for p in build_probes(records, edited) if p.kind in ("same-fact", "same-subject")]


def test_a_locality_prompt_asking_an_edited_fact_is_a_probe_of_that_edit():
    def record(prompt, subject, new, true, loc_prompt, loc_answer):
        return BenchRecord(prompt, new, prompt, loc_prompt, loc_answer, subject=subject, answer=true)

    records = [
        record("Toko Yasuda plays the", "Toko Yasuda", "piano", "guitar", "John Lennon performs on the", "guitar"),
        record("John Lennon plays the", "John Lennon", "violin", "guitar", "Toko Yasuda was born in", "Tokyo"),
        record("The capital of Peru is", "Peru", "Oslo", "Lima", "The quick brown fox jumps over", "the lazy dog"),
    ]
    probes = {(p.kind, p.record): p for p in build_probes(records, [0, 1, 2]) if p.kind.startswith("loc")}
    # Record 0's locality prompt asks John Lennon's instrument, which record 1 edits: that edit's probe.
    assert probes[("loc-edited-fact", 1)].prompt == "John Lennon performs on the"
    assert probes[("loc-edited-fact", 1)].target == "violin"
    # Record 1's asks another fact of the edited Toko Yasuda: it must stay, counted apart from "loc".
    assert probes[("loc-subject", 1)].prompt == "Toko Yasuda was born in"
    assert set(probes) == {("loc-edited-fact", 1), ("loc-subject", 1), ("loc", 2)}
    # Edit only record 0: John Lennon is no edited subject, and its prompt is a plain "loc" probe.
    assert [(p.kind, p.record) for p in build_probes(records, [0]) if p.kind.startswith("loc")] == [("loc", 0)]


def test_subject_first_rewording_needs_the_subject_verbatim_and_not_first():
    assert subject_first("What company made Volvo B12M?", "Volvo B12M") == "Volvo B12M: What company made it?"
    assert subject_first("Who is Nebaioth's father?", "Nebaioth") == "Nebaioth: Who is its father?"
    assert subject_first("France is in", "France") is None
    assert subject_first("What company made it?", "Volvo") is None


@pytest.mark.parametrize("subjects", ["none", "given"])
def test_locality_run_prints_one_row_per_probe_kind_with_counts_from_the_data(
    tiny_model_dir,  # noqa: F811
    locality_data,
    other_subjects_data,
    tmp_path,
    subjects,
):
    config = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, loss_threshold=0.05)
    opts = LocalityOptions(
        data=locality_data,
        format="zsre",
        edits=2,
        subjects=subjects,
        batch_size=2,
        max_new_tokens=10,
        forms=("plain", "chat"),
        other_subjects=other_subjects_data,
        probes_out=tmp_path / "probes.jsonl",
        model_path=tiny_model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
        config=config,
    )
    result = run_locality(opts)
    assert result["probes"] == result["forms"]["plain"]
    # Every probe's answer, per form, adds up to the table's rows.
    answers = [json.loads(line) for line in (tmp_path / "probes.jsonl").read_text().splitlines()]
    for form, rows in result["forms"].items():
        for kind, row in rows.items():
            mine = [a for a in answers if a["form"] == form and a["kind"] == kind]
            assert len(mine) == row["n"]
            if mine:
                assert sum(a["ok"] for a in mine) / len(mine) == pytest.approx(row["score"], abs=1e-4)
                assert sum(a["expert"] is not None for a in mine) / len(mine) == pytest.approx(row["routed"], abs=1e-4)
                assert all((a["nearest_edit"] is None) == (a["expert"] is None) for a in mine)
                assert all((a["unedited"] is None) == row["edited"] for a in mine)
    counts = {kind: row["n"] for kind, row in result["probes"].items()}
    assert counts == {
        "edit": 2,
        "lower-case": 2,
        "paraphrase": 2,
        "subject-first": 2,
        "same-fact": 1,
        "other-subject": 2,
        "same-subject": 1,
        "subject+other-q": 2,
        "subject+new-q": 1,  # from the other file's question
        "loc": 2,
        "loc-edited-fact": 0,
        "loc-subject": 0,
    }
    assert (result["edits"], result["experts"], result["held_back"]) == (2, 1, 1)
    # Without subjects the (random) model names a span of each prompt as its subject, as the server does.
    assert result["subjects_inferred"] == (0 if subjects == "given" else 2)
    assert result["subject_keyed_edits"] == 2
    # Both edits in one expert, trained to the loss threshold: each edit prompt reaches it and answers.
    assert result["probes"]["edit"] == {"edited": True, "n": 2, "score": 1.0, "routed": 1.0, "own_expert": 1.0}
    for kind in ("other-subject", "same-subject", "subject+other-q", "subject+new-q", "loc"):
        row = result["probes"][kind]
        assert row["own_expert"] is None and 0.0 <= row["score"] <= 1.0 and 0.0 <= row["routed"] <= 1.0
        if row["routed"] == 0.0:
            assert row["score"] == 1.0  # no expert reached: the unedited model's output, token for token
    # Asked as the user turn of a chat (routed on the message), the edits answer too: they are
    # trained in chat form as well.
    chat = result["forms"]["chat"]
    assert {kind: row["n"] for kind, row in chat.items()} == counts
    assert chat["edit"] == {"edited": True, "n": 2, "score": 1.0, "routed": 1.0, "own_expert": 1.0}
    lines = format_locality_table(result).splitlines()
    assert "T=2" in lines[0] and f"subjects={subjects}" in lines[0]
    assert lines[1].split()[:5] == ["plain", "form", "must", "n", "score"]
    assert [line.split()[0] for line in lines[2 : 2 + len(counts)]] == list(counts)
    assert lines[2].split()[1:5] == ["be", "edited", "2", "1.000"]
    chat_header = 2 + len(counts)
    assert lines[chat_header].split()[:2] == ["chat", "form"]
    assert [line.split()[0] for line in lines[chat_header + 1 : -1]] == list(counts)


def _routing_options(model_dir, data, tmp_path) -> LocalityOptions:
    return LocalityOptions(
        data=data,
        format="zsre",
        edits=2,
        subjects="none",
        batch_size=2,
        model_path=model_dir,
        cache_dir=tmp_path / "cache",
        device="cpu",
        config=LemoeConfig(layer=2),
    )


def test_routing_only_locality_compares_relation_thresholds_without_training(tiny_model_dir, locality_data, tmp_path):  # noqa: F811
    from app.benchmarks.locality import format_routing_table, run_routing

    result = run_routing(_routing_options(tiny_model_dir, locality_data, tmp_path), [None, 2.0])
    assert result["subjects_inferred"] == 2 and 0.0 <= result["inferred_exact"] <= 1.0
    unchecked, impossible = result["relation_thresholds"]["none"], result["relation_thresholds"]["2.0"]
    assert unchecked["edit"]["score"] == 1.0  # an edit's own prompt reaches its own expert
    # A relation threshold no cosine reaches shuts every subject-keyed edit: nothing is routed.
    assert impossible["edit"]["score"] == 0.0 and impossible["loc"]["score"] == 1.0
    table = format_routing_table(result)
    assert "rel none" in table and "rel 2.0" in table and "subject+other-q" in table


def test_routing_only_locality_compares_span_thresholds(tiny_model_dir, locality_data, tmp_path):  # noqa: F811
    from app.benchmarks.locality import format_routing_table, run_routing

    result = run_routing(_routing_options(tiny_model_dir, locality_data, tmp_path), [None], [None, 2.0])
    assert "relation_thresholds" not in result and result["relation_threshold"] is None
    unchecked, impossible = result["span_thresholds"]["none"], result["span_thresholds"]["2.0"]
    assert unchecked["edit"]["score"] == 1.0
    # A span threshold no cosine reaches shuts every subject-keyed edit.
    assert impossible["edit"]["score"] == 0.0 and impossible["loc"]["score"] == 1.0
    table = format_routing_table(result)
    assert "span none" in table and "span 2.0" in table


def test_training_bench_times_variants_in_alternating_runs_and_packing_computes_the_padded_loss(
    tiny_model_dir,  # noqa: F811
    data,
    tmp_path,
    capsys,
):
    from app import cli

    common = f"--data {data} --format zsre --edits 3 --batch-size 2 --repeats 2 --model {tiny_model_dir} --device cpu"
    argv = ["bench", "training", *common.split(), "--cache-dir", str(tmp_path / "cache"), "--json"]
    # In the model's own precision and without a warm-up (every run then takes exactly max_steps):
    # packing must compute the padded rows' loss to float rounding.
    exact = "max_steps=4,lr=0.03,train_precision=full,warmup_loss=none"
    argv += ["--variant", f"packed:{exact}", "--variant", f"padded:{exact},train_packing=false", "--variant", "auto:max_steps=4,lr=0.03"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert (result["edits"], result["experts_per_run"], result["repeats"], result["torch_threads"]) == (3, 2, 2, 1)
    packed, padded = result["variants"]["packed"], result["variants"]["padded"]
    assert packed["overrides"] == {"max_steps": 4, "lr": 0.03, "train_precision": "full", "warmup_loss": None}
    assert padded["overrides"] == {"max_steps": 4, "lr": 0.03, "train_precision": "full", "warmup_loss": None, "train_packing": False}
    assert packed["cpu_vs_first"] == 1.0 and len(packed["cpu_s_per_edit_runs"]) == 2
    assert all(x > 0 for x in packed["cpu_s_per_edit_runs"] + padded["cpu_s_per_edit_runs"])
    # The tiny tokenizer's chat template gives each edit a chat form: those train packed, with the
    # padded rows' loss.
    assert packed["mean_steps"] == padded["mean_steps"] == 4.0
    assert packed["final_losses"] == pytest.approx(padded["final_losses"], rel=1e-4)
    assert [line.split()[0] for line in lines[2:5]] == ["packed", "padded", "auto"]
    # The table says what each variant computed in: "auto" as it resolved on this machine.
    assert [line.split()[1] for line in lines[2:5]] == ["full", "full", resolved_precision("auto", torch.device("cpu"))]
    with pytest.raises(SystemExit, match="labels must differ"):
        cli.main(["bench", "training", *common.split(), "--variant", "a", "--variant", "a:lr=0.1"])
    with pytest.raises(SystemExit, match="--variant a: 'nonsense=1': expected KEY=VALUE"):
        cli.main(["bench", "training", *common.split(), "--variant", "a:nonsense=1"])
