"""The factual QA task (issue 12): its shipped question file and its alias-match scorer."""

from __future__ import annotations

import json

from multistream.data.examples import SequentialExample
from multistream.evaluation.tasks import get_task, load_task_examples
from multistream.evaluation.tasks.factual import FACTUAL_QA_FILE, alias_match


def _example(qid: str) -> SequentialExample:
    return next(e for e in load_task_examples("factual") if e.id == qid)


def test_the_question_file_ships_at_least_100_questions_with_aliases_and_subjects():
    records = [json.loads(line) for line in FACTUAL_QA_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(records) >= 100
    assert len({r["id"] for r in records}) == len(records)
    assert len({r["messages"][0]["content"] for r in records}) == len(records)
    for r in records:
        assert r["answers"] and all(a.strip() for a in r["answers"]), r
        assert r["subject"].strip(), r
    examples = load_task_examples("factual")
    assert len(examples) == len(records)
    assert examples[0].user == "What is the capital of France?"
    assert examples[0].answer == "Paris"  # the first alias: the gold column of reports


def test_scorer_matches_any_alias_as_whole_words():
    task = get_task("factual")
    capital = _example("fqa-010")  # China: Beijing or Peking
    assert capital.user == "What is the capital of China?"
    assert task.score("The capital of China is Beijing.", capital)["accuracy"] == 1.0
    assert task.score("peking", capital)["accuracy"] == 1.0
    assert task.score("Shanghai is the largest city.", capital)["accuracy"] == 0.0
    freezing = next(e for e in load_task_examples("factual") if "freezing point" in e.user)
    assert task.score("Water freezes at 0 degrees Celsius.", freezing)["accuracy"] == 1.0
    assert task.score("It freezes at 100 degrees.", freezing)["accuracy"] == 0.0  # "0" is not inside "100"
    author = next(e for e in load_task_examples("factual") if e.user == "Who wrote Les Miserables?")
    assert task.score("Les Misérables was written by Victor Hugo.", author)["accuracy"] == 1.0


def test_answered_is_zero_for_empty_or_punctuation_only_output():
    task = get_task("factual")
    ex = _example("fqa-001")
    assert task.score("", ex)["answered_any"] == 0.0
    assert task.score(" - ...", ex)["answered_any"] == 0.0
    assert task.score("Lyon", ex) == {"prediction": "Lyon", "accuracy": 0.0, "answered_any": 1.0}


def test_alias_match_ignores_case_accents_and_punctuation():
    assert alias_match("It was da Vinci!", ["Leonardo", "da Vinci"])
    assert alias_match("BERNERS-LEE", ["Berners-Lee"])
    assert alias_match("Tim Berners Lee", ["Berners-Lee"])
    assert not alias_match("Vincent", ["Vinci"])
