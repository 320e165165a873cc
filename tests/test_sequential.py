"""One sequential baseline and one chat prompt; adapters merged for decoding."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_SILENCE, TINY_VOCAB, make_tiny_base
from multistream.engine import Session, SessionConfig
from multistream.model import MultiStreamLM
from multistream.schema import StreamSchema
from multistream.sequential import SequentialBaseline, baseline_lm, chat_prompt_ids
from test_engine import TOK, random_rows


class EosWords:
    """The engine tests' word tokenizer with an end token."""

    eos_token_id = 2

    def encode(self, text, add_special_tokens=False):
        return TOK.encode(text)

    def decode(self, ids, **_):
        return TOK.decode(ids)


def test_chat_prompt_ids_matches_the_template_and_takes_text_or_messages(smol_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    encoded = smol_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    assert chat_prompt_ids(smol_tokenizer, messages) == expected
    assert all(isinstance(t, int) for t in expected)
    one = chat_prompt_ids(smol_tokenizer, "Hi there")
    assert one == chat_prompt_ids(smol_tokenizer, [{"role": "user", "content": "Hi there"}])
    assert smol_tokenizer.decode(one).rstrip().endswith("assistant")
    closed = chat_prompt_ids(smol_tokenizer, "Hi there", add_generation_prompt=False)
    assert len(closed) < len(one) and one[: len(closed)] == closed


def test_chat_prompt_ids_without_a_template_joins_contents():
    assert chat_prompt_ids(
        EosWords(), [{"role": "user", "content": "a b"}, {"role": "user", "content": "c"}]
    ) == (TOK.encode("a b c"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_baseline_equals_transformers_generate(arch):
    lm = make_tiny_base(arch)
    prompt = [5, 17, 33, 41, 9]
    baseline = SequentialBaseline(lm, EosWords(), prompt, 12)
    pieces = list(baseline)
    with torch.no_grad():
        out = lm.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=0
        )
    expected = out[0, len(prompt) :].tolist()
    if 2 in expected:
        expected = expected[: expected.index(2)]
    assert baseline.ids == expected
    assert "".join(pieces) == baseline.text == TOK.decode(expected)
    assert baseline.reason == ("eos" if len(expected) < 12 else "max_tokens")


def test_baseline_samples_with_the_engine_sampler():
    lm = make_tiny_base("llama")
    prompt = [5, 17, 33]

    def draw(**kw):
        b = SequentialBaseline(lm, EosWords(), prompt, 10, **kw)
        list(b)
        return b.ids

    assert draw(temperature=1.0, seed=3) == draw(temperature=1.0, seed=3)
    assert draw(temperature=1.0, seed=3) != draw(temperature=1.0, seed=4) or draw(
        temperature=1.0, seed=5
    ) != draw(temperature=1.0, seed=3)
    # A nucleus this small keeps only the most likely token: the draw is the greedy answer.
    assert draw(temperature=1.0, top_p=1e-6, seed=1) == draw()


def _lora_model() -> MultiStreamLM:
    from peft import LoraConfig, get_peft_model

    base = make_tiny_base("llama")
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, which would merge nothing
            p.data = torch.randn(p.shape, generator=generator) * 0.3
    schema = StreamSchema(StreamSchema.parse("user,assistant").streams, silence_id=TINY_SILENCE)
    model = MultiStreamLM.from_base(lora, schema)
    torch.nn.init.normal_(model.stream_embedding.weight, std=0.5, generator=generator)
    return model.eval()


def test_merged_adapter_decodes_the_same_tokens_with_plain_linears():
    model = _lora_model()
    cfg = SessionConfig(max_rows=10, stop_silent_rows=0)
    prefill = random_rows(5, 2, 3)

    def rows() -> list[tuple[int, ...]]:
        s = Session(model, TOK, cfg)
        s.prefill(prefill)
        s.feed("user", [40, 41, 42])
        s.close()
        list(s)
        return s.rows

    unmerged = rows()
    ids = torch.randint(4, TINY_VOCAB, (1, 6, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
    assert model.merge_adapter() is model and model.adapter_merged
    assert type(model.base_model).__name__ == "LlamaForCausalLM"
    assert all("lora" not in n for n, _ in model.named_modules())
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-4)
    assert rows() == unmerged
    assert model.merge_adapter() is model  # idempotent


def test_baseline_of_an_unmerged_model_runs_the_base_without_its_adapter():
    model = _lora_model()
    lm, _ = baseline_lm(model)
    assert lm is model.get_base_model()
    prompt = [5, 17, 33, 41]
    with_adapter_off = SequentialBaseline(model, EosWords(), prompt, 8)
    list(with_adapter_off)
    plain = make_tiny_base("llama")  # same seed: the weights the adapter was added to
    alone = SequentialBaseline(plain, EosWords(), prompt, 8)
    list(alone)
    assert with_adapter_off.ids == alone.ids


def test_resolve_multistream_merges_a_saved_adapter(tmp_path, monkeypatch):
    from multistream.loading import resolve_multistream

    make_tiny_base("llama").save_pretrained(tmp_path / "base")  # the adapter's base, reloadable
    model = _lora_model()
    model.config.base_model = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr("multistream.model.MultiStreamLM.load_tokenizer", staticmethod(lambda d: EosWords()))
    loaded, _ = resolve_multistream(tmp_path / "m")
    assert loaded.adapter_merged and type(loaded.base_model).__name__ == "LlamaForCausalLM"
    ids = torch.randint(4, TINY_VOCAB, (1, 5, 2), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-4)
    # Its baseline is the base without the adapter, loaded once more.
    lm, _ = baseline_lm(loaded)
    assert lm is not loaded.base_model and "lora" not in str(type(lm)).lower()
