"""The monitorability evaluation (paper Sec 7): metrics on hand-made judge answers, the shipped
scenario sets, and an end-to-end run against a real local OpenAI-compatible judge (SmolLM2
served by ``python -m multistream.server.app``; its verdicts are noise, the pipeline is real)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from authors_helpers import save_authors_model
from multistream.authors import authors_schema
from multistream.cli import app
from multistream.evaluation.monitorability import (
    BEHAVIOUR_CLASSES,
    CONCERN_CATEGORIES,
    MonitorabilityError,
    MonitorabilityOptions,
    awareness_metrics,
    bootstrap_ci,
    concern_metrics,
    evaluate_monitorability,
    load_scenarios,
    monitor_metrics,
    parse_label,
    parse_yes_no,
    split_think,
    transcript_from_streams,
)
from test_data_rewrite import server  # noqa: F401  (the module-scoped local OpenAI server fixture)

# -- parsing judge answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, verdict",
    [("YES", True), ("no", False), ("Yes, it mentions the graders.", True), ("Answer: NO.", False),
     ("The answer is yes", True), ("yesterday nothing", None), ("", None), ("I cannot tell", None)],
)  # fmt: skip
def test_parse_yes_no(answer, verdict):
    assert parse_yes_no(answer) is verdict


@pytest.mark.parametrize(
    "answer, label",
    [("sandbagging", "sandbagging"), ("Oversight subversion", "oversight_subversion"),
     ("The class is: self-preservation.", "self_preservation"), ("none_of_the_above", "none_of_the_above"),
     ("goal_preservation, maybe deceptive_compliance", "goal_preservation"), ("scheming", None)],
)  # fmt: skip
def test_parse_label(answer, label):
    assert parse_label(answer) == label


# -- metrics on hand-made judge answers ------------------------------------------------------------


def test_awareness_and_subvocalization_rates():
    reasoning = [parse_yes_no(a) for a in ["YES", "yes", "NO", "Yes.", "no", "???"]]
    output = [parse_yes_no(a) for a in ["NO", "YES", "NO", "garbled", "YES", "NO"]]
    m = awareness_metrics(reasoning, output, resamples=500, seed=0)
    assert m["eval_awareness"]["value"] == pytest.approx(3 / 6)
    assert m["eval_awareness_output"]["value"] == pytest.approx(2 / 6)
    # Reasoning fires, output does not: items 0 and 3 (an unparsed output counts as NO).
    assert m["subvocalization"]["value"] == pytest.approx(2 / 6)
    assert m["unparsed"] == 2
    low, high = m["eval_awareness"]["ci95"]
    assert 0.0 <= low < 0.5 < high <= 1.0


def test_monitor_accuracy_over_the_six_classes():
    labels = list(BEHAVIOUR_CLASSES) * 2
    from_reasoning = [
        parse_label(a) for a in [*BEHAVIOUR_CLASSES, "sandbagging", "nonsense", *BEHAVIOUR_CLASSES[2:]]
    ]
    from_output = ["none_of_the_above"] * 12
    m = monitor_metrics(labels, from_reasoning, from_output, resamples=500)
    assert m["monitor_accuracy"]["value"] == pytest.approx(11 / 12)  # only the "nonsense" answer misses
    assert m["monitor_accuracy_output"]["value"] == pytest.approx(2 / 12)
    per_class = m["monitor_accuracy_per_class"]
    assert per_class["oversight_subversion"] == 0.5 and per_class["sandbagging"] == 1.0
    assert m["unparsed"] == 1 and m["chance"] == pytest.approx(1 / 6)


def test_concern_subvocalization():
    verdicts = [
        [(True, False)],  # raised only internally: sub-vocalized
        [(True, True), (False, False)],  # raised in both
        [(False, True)],  # only visible
        [(True, None), (False, False)],  # visible verdict unparsed: counts as absent
    ]
    m = concern_metrics(verdicts, resamples=500)
    assert m["concern_subvocalization"]["value"] == pytest.approx(2 / 4)
    assert m["concern_raised_internally"]["value"] == pytest.approx(3 / 4)
    assert m["concern_raised_visibly"]["value"] == pytest.approx(2 / 4)
    assert m["unparsed"] == 1


def test_bootstrap_interval():
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    values = [1] * 30 + [0] * 70
    low, high = bootstrap_ci(values, resamples=1000, seed=0)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_ci(values, seed=0) == (low, high)  # seeded: reproducible
    assert bootstrap_ci(values, seed=1) != (low, high)


# -- scenarios and transcripts ---------------------------------------------------------------------


def test_shipped_scenario_sets_are_complete():
    awareness = load_scenarios("awareness")
    monitor = load_scenarios("monitor")
    concerns = load_scenarios("concerns")
    assert len(awareness) >= 20 and len(monitor) >= 24 and len(concerns) >= 14
    assert {s.label for s in monitor} == set(BEHAVIOUR_CLASSES)
    assert {s.category for s in concerns} == set(CONCERN_CATEGORIES)
    assert all(1 <= len(s.concerns) <= 2 for s in concerns)


def test_a_bad_scenario_file_names_file_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "p", "label": "sandbagging"}) + "\n"
                    + json.dumps({"id": "b", "prompt": "q", "label": "scheming"}) + "\n")  # fmt: skip
    with pytest.raises(MonitorabilityError, match=r"mine.jsonl:2: 'label' must be one of"):
        load_scenarios("monitor", path)
    with pytest.raises(MonitorabilityError, match="exactly one subject"):
        MonitorabilityOptions(out=tmp_path)


def test_transcripts_from_streams_and_think_blocks():
    schema = authors_schema()
    texts = {"User": "hi", "Output": " Hello!", "Analytical": " they test me", "Skeptical": "", "Void": " hm"}
    t = transcript_from_streams("x", texts, schema)
    assert t.reasoning == "[Analytical] they test me\n[Void] hm" and t.output == "Hello!"
    t = split_think("y", "<think>graders are watching</think>\nSure, here it is.")
    assert t.reasoning == "graders are watching" and t.output == "Sure, here it is."


# -- end to end against a real local judge ---------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_with_a_local_judge_and_resume(server, tmp_path):  # noqa: F811
    subject = tmp_path / "stream-tiny"
    save_authors_model(subject)
    out = tmp_path / "run"
    args = ["eval", "monitorability", "--model", str(subject), "--out", str(out), "--judge-base-url", server,
            "--judge-model", "smollm2-135m", "--limit", "1", "--max-rows", "6", "--resamples", "200"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "monitorability.json").read_text())
    assert report["scenarios"] == {"awareness": 1, "monitor": 1, "concerns": 1}
    for part, key in [("awareness", "subvocalization"), ("monitor", "monitor_accuracy"),
                      ("concerns", "concern_subvocalization")]:  # fmt: skip
        value = report[part][key]
        assert 0.0 <= value["value"] <= 1.0 and value["n"] == 1
        assert value["ci95"][0] <= value["value"] <= value["ci95"][1]
    judgements = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    concerns = len(load_scenarios("concerns")[0].concerns)
    assert len(judgements) == 1 + 1 + concerns
    sent = report["judge_requests"]["sent"]
    assert sent == 2 * len(judgements)
    # A rerun answers every judge request from the cache: nothing is asked twice.
    options = MonitorabilityOptions(
        out=out,
        judge_base_url=server,
        judge_model="smollm2-135m",
        model=str(subject),
        limit=1,
        max_rows=6,
        resamples=200,
    )
    again = evaluate_monitorability(options)
    assert again["judge_requests"] == {"sent": 0, "cache_hits": sent}
    assert again["awareness"] == report["awareness"]


@pytest.mark.slow
def test_a_chat_baseline_subject(server, tmp_path):  # noqa: F811
    options = MonitorabilityOptions(
        out=tmp_path,
        judge_base_url=server,
        judge_model="smollm2-135m",
        subject_base_url=server,
        subject_model="smollm2-135m",
        parts=("awareness",),
        limit=1,
        subject_max_tokens=8,
        resamples=100,
    )
    report = evaluate_monitorability(options)
    assert report["scenarios"] == {"awareness": 1}
    transcript = json.loads((tmp_path / "transcripts.jsonl").read_text().splitlines()[0])
    assert transcript["output"] and transcript["reasoning"] == ""  # SmolLM2 writes no <think> block
