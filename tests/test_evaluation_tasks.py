"""Evaluation tasks behind one registry: each task bundles its loader, prompt and scorer; a new
task is one module; the CLI lists tasks, attacks and policies from the registries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from multistream.cli import app
from multistream.data.examples import SequentialExample
from multistream.evaluation import tasks as task_registry
from multistream.evaluation.tasks import TASKS, Task, TaskError, get_task, load_task_examples, register_task

runner = CliRunner()


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


@pytest.fixture
def scratch_task():
    """Register tasks for one test and leave the registry as it was."""
    added: list[str] = []

    def add(task: Task) -> Task:
        added.append(task.name)
        return register_task(task)

    yield add
    for name in added:
        TASKS.pop(name, None)


def test_every_module_of_the_package_registers_its_task():
    modules = sorted(
        p.stem for p in Path(task_registry.__file__).parent.glob("*.py") if not p.stem.startswith("_")
    )
    assert sorted(TASKS) == modules  # found by discovery, no import list to keep in step
    assert list(TASKS) == sorted(TASKS)  # `--tasks all` order
    for task in TASKS.values():
        assert task.description and callable(task.score)


def test_a_task_with_its_own_loader_and_prompt_is_one_object(tmp_path, scratch_task):
    def prompt(word: str) -> str:
        return f"Spell {word} backwards.\nFinal answer: <VALUE>\n"

    def loader(path: Path) -> list[SequentialExample]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [
            SequentialExample(id=str(i), source="reverse", user=prompt(r["word"]), assistant=r["word"][::-1],
                              answer=r["word"][::-1])
            for i, r in enumerate(rows)
        ]  # fmt: skip

    def score(output: str, example: SequentialExample) -> dict[str, float | str | None]:
        return {"prediction": output.strip(), "accuracy": float(output.strip() == example.answer)}

    (tmp_path / "reverse.jsonl").write_text('{"word": "abc"}\n{"word": "stream"}\n{"word": "x"}\n')
    task = scratch_task(
        Task("reverse", "reverse.jsonl", "", score, loader=loader, prompt=prompt, description="d")
    )
    assert get_task("reverse") is task
    examples = load_task_examples("reverse", tmp_path, limit=2)
    assert [e.user for e in examples] == [prompt("abc"), prompt("stream")]
    assert [task.score(e.answer, e)["accuracy"] for e in examples] == [1.0, 1.0]
    assert task.score("nope", examples[0])["accuracy"] == 0.0
    # The CLI help reads the registry: the new task is listed without touching cli.py.
    assert "reverse" in _help("eval", "accuracy")


def test_a_registered_prompt_is_the_one_the_loader_writes(tmp_path):
    record = {"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
              "answers": ["France"]}  # fmt: skip
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.jsonl").write_text(json.dumps(record) + "\n")
    squad = get_task("squad")
    (example,) = squad.load(tmp_path)
    assert example.user == squad.prompt(record["context"], record["question"])
    assert squad.score("Final answer: France", example)["f1"] == 1.0


def test_registration_refuses_duplicates_and_unknown_loader_formats(scratch_task):
    with pytest.raises(ValueError, match="'squad' is already registered"):
        register_task(Task("squad", "x", "squad", lambda o, e: {}))
    with pytest.raises(ValueError, match="loader format 'nosuchformat' is unknown"):
        scratch_task(Task("broken", "x", "nosuchformat", lambda o, e: {}))
    assert "broken" not in TASKS


def test_unknown_task_suggests_the_closest_name(tmp_path):
    with pytest.raises(TaskError, match=r"unknown task 'sqaud' \(did you mean 'squad'\?\)"):
        get_task("sqaud")
    with pytest.raises(TaskError, match="data file .* not found; pass --data-dir"):
        load_task_examples("gsm8k", tmp_path)


def test_cli_help_lists_tasks_attacks_and_policies_from_the_registries():
    from multistream.data.convert import POLICIES
    from multistream.evaluation.injection import ATTACKS

    accuracy, latency = _help("eval", "accuracy"), _help("eval", "latency")
    for name in TASKS:
        assert name in accuracy and name in latency
    injection = _help("eval", "injection")
    assert all(name in injection for name in ATTACKS)
    convert = _help("convert")
    assert all(name in convert for name in POLICIES)
    assert "{names}" not in accuracy + latency + injection + convert


def test_systems_need_no_demo_module_to_know_the_demo_model():
    import inspect

    from multistream.evaluation import systems

    assert "multistream.demo" not in inspect.getsource(systems)
    assert systems._is_saved_multistream("demo")  # registered by multistream.loading itself
