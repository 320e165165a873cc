"""Layout B converters (``multistream convert --layout blocks``): every policy keeps its guarantee on
the shared data sets, and Layout B files round-trip bit-exactly (ids kept, or re-tokenised)."""

from __future__ import annotations

import functools
import json
import random

import pytest
from typer.testing import CliRunner

from multistream.cli import app
from multistream.data.blocks import (
    DEFAULT_SYSTEM,
    check_blocks,
    convert_blocks_example,
    convert_blocks_examples,
)
from multistream.data.blocks_io import (
    BLOCKS_FORMAT_NAME,
    read_blocks,
    record_from_json,
    record_to_json,
    write_blocks,
)
from multistream.data.convert import BRIDGING_UTTERANCES, ConversionError, ConvertReport
from multistream.data.examples import SequentialExample
from multistream.data.io import GridFileError
from multistream.data.loaders import load_dataset_file
from shared_data import SHARED_FILES, require_shared_file

SAMPLE = 8
POLICIES = ("wait-k", "think-while-reading", "separated")


@functools.cache
def _sample(fmt: str, relative: str) -> tuple[SequentialExample, ...]:
    examples = load_dataset_file(require_shared_file(relative), fmt, skip_bad=True)
    return tuple(random.Random(f"blocks:{relative}").sample(examples, min(SAMPLE, len(examples))))


@pytest.mark.parametrize(("fmt", "relative"), SHARED_FILES, ids=[f[1] for f in SHARED_FILES])
def test_every_blocks_policy_keeps_its_guarantee_on_real_data(fmt, relative, smol_tokenizer):
    tok = smol_tokenizer
    examples = _sample(fmt, relative)
    for policy in POLICIES:
        report = ConvertReport()
        records = convert_blocks_examples(examples, policy, tok, report=report)
        assert report.total == len(examples)
        if policy != "think-while-reading":
            empty = sum(not e.assistant.strip() for e in examples)
            assert report.kept == len(examples) - empty, report.dropped
        for r in records:
            where = f"{policy} {fmt}:{r.meta['id']}"
            assert check_blocks(r, tok) == [], where
            ex = r.example
            assert ex.num_heads == (2 if policy == "think-while-reading" else 1)
            src = next(e for e in examples if e.id == r.meta["id"])
            # The answer head says the example's answer verbatim after its bridging.
            answer = (src.conclusion or src.assistant) if policy == "think-while-reading" else src.assistant
            assert tok.decode(ex.heads[-1][ex.targets_from[-1] : -1]).endswith(answer.strip()), where
            # The user block is the example's input word for word (live tokenisation).
            user_fields = ("data",) if policy == "separated" else ("user", "data")
            words = " ".join(t for n, t in src.input_fields() if n in user_fields).split()
            assert tok.decode(ex.user[3:-1]).split() == words, where


def test_wait_k_bridges_until_the_input_is_visible_then_answers(smol_tokenizer):
    tok = smol_tokenizer
    ex = SequentialExample(
        "1", "t", user="What is the capital of France? Answer in one word.", assistant="Paris."
    )
    r = convert_blocks_example(ex, "wait-k", tok)
    head, start = r.example.heads[0], r.example.targets_from[0]
    a = r.meta["answer_from"][0]
    said = tok.decode(head[start : start + a])
    assert all(u in BRIDGING_UTTERANCES for u in r.meta["bridging"][0])
    assert said == " ".join(r.meta["bridging"][0])
    # The answer's first token is predicted at y0 + start + a - 1, which must be after the user's
    # <|im_end|> at y0 + len(user) - 1 (cross-stream keys need a strictly earlier y).
    assert start + a - 1 > len(r.example.user) - 1
    assert tok.decode(head[start + a : -1]) == " Paris."
    assert tok.decode(r.example.system) == f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>"
    # A record that answers one step earlier is caught (the check can fail).
    early = r.example.heads[0][:]
    del early[start]  # everything after moves one step earlier
    r.example.heads[0] = early
    assert any("before the input is visible" in p or "not bridging" in p for p in check_blocks(r, tok))


def test_think_while_reading_thinks_before_the_input_ends(smol_tokenizer):
    exs = load_dataset_file(require_shared_file("gsm8k/test.jsonl"), "gsm8k", limit=6)
    records = convert_blocks_examples(exs, "think-while-reading", smol_tokenizer)
    assert records and sum(r.meta["early_steps"] for r in records) > 0
    for r in records:
        think = r.example.heads[0]
        # The answer head waits for the whole thinking head (its <|im_end|> at y0 + len - 1).
        assert r.example.targets_from[1] + r.meta["answer_from"][1] - 1 > len(think) - 1


def test_separated_puts_the_instruction_in_the_system_block(smol_tokenizer):
    tok = smol_tokenizer
    ex = SequentialExample(
        "2", "t", user="Summarise the text.", data="Cats sleep a lot.", assistant="Cats nap."
    )
    r = convert_blocks_example(ex, "separated", tok)
    assert "Summarise the text." in tok.decode(r.example.system)
    assert tok.decode(r.example.user[3:-1]) == " Cats sleep a lot."


def test_policies_without_a_blocks_form_and_tokenizers_without_chatml_fail_clearly(smol_tokenizer):
    ex = SequentialExample("3", "t", user="Hi", assistant="Hello")
    with pytest.raises(ConversionError, match="use --policy wait-k"):
        convert_blocks_example(ex, "sequential", smol_tokenizer)
    with pytest.raises(ConversionError, match="unknown policy"):
        convert_blocks_example(ex, "nope", smol_tokenizer)

    class NoChatML:
        unk_token_id = 0

        def convert_tokens_to_ids(self, token):
            return 0

    with pytest.raises(ConversionError, match="no <\\|im_start\\|> token"):
        convert_blocks_example(ex, "wait-k", NoChatML())


def test_blocks_files_round_trip_bit_exact(tmp_path, smol_tokenizer):
    tok = smol_tokenizer
    exs = (
        list(_sample("alpaca", "alpaca/alpaca_en_demo.json")) + list(_sample("gsm8k", "gsm8k/test.jsonl"))[:3]
    )
    records = convert_blocks_examples(exs[:5], "wait-k", tok) + convert_blocks_examples(
        exs[5:], "think-while-reading", tok
    )
    path = tmp_path / "b.jsonl"
    assert write_blocks(path, records, tok) == len(records)
    for reader_tok in (None, tok):
        back = read_blocks(path, reader_tok).records
        assert [b.example.to_dict() for b in back] == [r.example.to_dict() for r in records]
    # Without ids, or with ids of another tokenizer, the text is re-tokenised: the same ids.
    for line in path.read_text().splitlines():
        data = json.loads(line)
        stale = {**data, "tokenizer": "sha256:another"}
        bare = {k: v for k, v in data.items() if k not in ("token_ids", "tokenizer", "targets_from")}
        for variant in (stale, bare):
            again = record_from_json(variant, tok)
            assert again.example.to_dict() == record_from_json(data).example.to_dict()
        assert record_to_json(record_from_json(data), tok) == data


def test_bad_blocks_lines_name_file_line_and_field(tmp_path, smol_tokenizer):
    good = record_to_json(
        convert_blocks_example(
            SequentialExample("4", "t", user="Hi", assistant="Hello"), "wait-k", smol_tokenizer
        ),
        smol_tokenizer,
    )
    bad = [
        {**good, "format": "multistream.grid"},
        {**good, "version": 9},
        {**good, "blocks": good["blocks"][:2]},
        {**good, "blocks": [good["blocks"][1], good["blocks"][0], good["blocks"][2]]},
        {**good, "targets_from": [99]},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in [good, *bad]) + "\nnot json\n")
    with pytest.raises(GridFileError, match=r"bad.jsonl:2: field 'format'.*Layout A grid file"):
        read_blocks(path)
    report = read_blocks(path, skip_bad=True)
    assert len(report.records) == 1 and [n for n, _ in report.skipped] == [2, 3, 4, 5, 6, 7]
    assert "version 9" in report.skipped[1][1] and "roles" in report.skipped[3][1]
    assert "targets_from[0]" in report.skipped[4][1]


def test_cli_convert_layout_blocks(tmp_path):
    out = tmp_path / "b.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "convert", "--layout", "blocks", "--input", str(require_shared_file("alpaca/alpaca_en_demo.json")),
            "--format", "alpaca", "--policy", "wait-k", "--limit", "6", "--max-tokens", "160", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Layout B, wait-k" in result.output and "too_long" in result.output
    lines = out.read_text().splitlines()
    assert lines and all(json.loads(x)["format"] == BLOCKS_FORMAT_NAME for x in lines)
    bad = CliRunner().invoke(
        app,
        ["convert", "--layout", "blocks", "--input", str(require_shared_file("alpaca/alpaca_en_demo.json")),
         "--format", "alpaca", "--policy", "sequential", "--out", str(out)],
    )  # fmt: skip
    assert bad.exit_code != 0 and "use --policy wait-k" in bad.output
