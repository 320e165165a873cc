import warnings

import pytest

from multistream.schema import Role, SchemaError, SchemaWarning, Stream, StreamSchema


def test_parse_guesses_roles_and_keeps_order():
    schema = StreamSchema.parse("user,think,assistant")
    assert schema.names == ["user", "think", "assistant"]
    assert [s.role for s in schema.streams] == [Role.INPUT, Role.THINK, Role.OUTPUT]
    assert schema.input_indices == [0]
    assert schema.generated_indices == [1, 2]
    assert schema.output_indices == [2]
    assert schema.index("assistant") == 2


def test_parse_explicit_roles():
    schema = StreamSchema.parse("system:input, data:input, answer:output, audit:think")
    assert [s.role.value for s in schema.streams] == ["input", "input", "output", "think"]


@pytest.mark.parametrize(
    ("streams", "message"),
    [
        ((Stream("a", Role.OUTPUT), Stream("a", Role.INPUT)), "unique"),
        ((Stream("user", Role.INPUT),), "no generated stream"),
        ((), "at least one stream"),
    ],
)
def test_invalid_schemas_say_why(streams, message):
    with pytest.raises(SchemaError, match=message):
        StreamSchema(streams)


def test_bad_names_and_roles():
    with pytest.raises(SchemaError, match="invalid"):
        Stream("has space", Role.OUTPUT)
    with pytest.raises(SchemaError, match="choose one of input, output, think"):
        Stream("x", "speaker")
    schema = StreamSchema.parse("user,assistant")
    with pytest.raises(SchemaError, match="unknown stream 'bot'.*user, assistant"):
        schema.index("bot")
    with pytest.raises(SchemaError, match="with_tokenizer"):
        schema.require_silence_id()


def test_dict_round_trip():
    schema = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_text=" .", silence_id=7)
    assert StreamSchema.from_dict(schema.to_dict()) == schema
    with pytest.raises(SchemaError, match="grid.jsonl:3"):
        StreamSchema.from_dict({"streams": [{"name": "a"}]}, where="grid.jsonl:3")


def test_silence_resolves_to_the_dash_token(smol_tokenizer):
    schema = StreamSchema.parse("user,assistant").with_tokenizer(smol_tokenizer)
    assert schema.silence_id == smol_tokenizer.encode(" -", add_special_tokens=False)[0]
    assert smol_tokenizer.decode([schema.silence_id]) == " -"


def test_a_misspelt_stream_name_warns_with_the_closest_known_name():
    with pytest.warns(
        SchemaWarning, match=r"'assistent' is not a known stream name.*did you mean 'assistant'\?"
    ):
        schema = StreamSchema.parse("user,assistent")
    assert schema["assistent"].role is Role.OUTPUT  # still valid: the warning does not change the schema
    with pytest.warns(SchemaWarning, match=r"did you mean 'user'\?.*usr:output"):
        StreamSchema.parse("usr,assistant")
    with pytest.raises(SchemaError, match=r"role 'inptu' is unknown \(did you mean 'input'\?\)"):
        StreamSchema.parse("user:inptu,assistant")


def test_known_names_and_explicit_roles_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in (
            "user,assistant",
            "system,data,assistant",
            "user,think,assistant",
            "user,reasoning_1,answer",
            "user,assistent:output",
            "usr:input,bot:output",
        ):
            StreamSchema.parse(spec)


@pytest.mark.slow  # a subprocess that loads torch and the SmolLM2 tokenizer (~12 s on a busy CPU)
def test_cli_shows_the_schema_warning(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "alpaca.json"
    data.write_text('[{"instruction": "Say hi.", "input": "", "output": "Hi"}]')
    result = subprocess.run(
        [sys.executable, "-m", "multistream.cli", "convert", "--input", str(data), "--format", "alpaca",
         "--out", str(tmp_path / "g.jsonl"), "--schema", "user,assistent", "--tokenizer", "smollm2-135m"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "did you mean 'assistant'" in result.stderr
