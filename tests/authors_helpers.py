"""Fixtures in the paper authors' format, built offline: a tiny random Qwen3 saved exactly as
their release is (config fields, channel_embedding, all-ones gate_in_norm, bf16, single-file or
sharded), a hand-built byte-level BPE tokenizer with " -" at id 481 and the ChatML tokens, and
their data files (dataset.jsonl and a processed parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

AUTHORS_VOCAB = 512
SILENCE_ID = 481
STREAMS = ("User", "Output", "Analytical", "Skeptical", "Intuitive", "Between", "Curious", "Void",
           "Instinct", "Synthesis")  # fmt: skip


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map (the ByteLevel alphabet).
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_tokenizer(directory: Path):
    """A byte-level BPE: 256 byte tokens, 225 merges, "Ġ-" (" -") at 481, then ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: i for i, b in enumerate(sorted(alphabet))}
    merges: list[tuple[str, str]] = []
    space = alphabet[ord(" ")]
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    candidates = [(space, ch) for ch in letters + "ITOW0123456789'"]
    candidates += [(a, b) for a in "etaoinshrdlcu" for b in letters]
    for pair in candidates:
        if len(vocab) == SILENCE_ID:
            break
        token = pair[0] + pair[1]
        if token not in vocab:
            vocab[token] = len(vocab)
            merges.append(pair)
    assert len(vocab) == SILENCE_ID
    vocab[space + "-"] = SILENCE_ID
    merges.append((space, "-"))
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok.save_pretrained(directory)
    return tok


def tiny_qwen3_config(**overrides):
    from transformers import Qwen3Config

    kwargs = dict(
        vocab_size=AUTHORS_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=482,  # <|im_end|>
        pad_token_id=483,  # <|endoftext|>
    )
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


def tiny_qwen35_config(**overrides):
    """A tiny Qwen3.5 text model: three Gated DeltaNet layers, then one softmax-attention layer."""
    from transformers import Qwen3_5TextConfig

    kwargs = dict(
        vocab_size=AUTHORS_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_conv_kernel_dim=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=482,
        pad_token_id=483,
    )
    kwargs.update(overrides)
    return Qwen3_5TextConfig(**kwargs)


def save_authors_model(
    directory: Path,
    seed: int = 0,
    auto_map: bool = False,
    shards: int = 1,
    tokenizer: bool = True,
    arch: str = "qwen3",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Write a tiny random Stream-8B (``qwen3``) or Stream-27B (``qwen3_5_text``) look-alike;
    returns its bf16 state dict and config dict."""
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_qwen3_config() if arch == "qwen3" else tiny_qwen35_config()
    model = AutoModelForCausalLM.from_config(config)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    hidden = config.hidden_size
    state["model.channel_embedding.weight"] = (torch.randn(len(STREAMS), hidden) * 0.5).to(torch.bfloat16)
    for i in range(config.num_hidden_layers):
        if arch == "qwen3" or config.layer_types[i] == "full_attention":
            state[f"model.layers.{i}.self_attn.gate_in_norm.weight"] = torch.ones(
                hidden, dtype=torch.bfloat16
            )
    record = config.to_dict()
    record.update(
        architectures=["Qwen3ForMedusa"] if auto_map else [type(model).__name__],
        dtype="bfloat16",
        num_channels=10,
        channel_embedding_method="additive",
        role_gating_enabled=False,
        role_gating_granularity="layer",
        role_gating_num_roles=10,
        role_gating_hidden_size=64,
        role_gating_temperature=2.0,
        role_gating_uniform_mix=0.05,
        role_gating_beta=0.8,
        role_gating_clip_min=-6.0,
        role_gating_eps=1e-4,
        deltanet_block_causal="column",
        deltanet_conv="column",
        medusa_num_heads=0,
        medusa_num_layers=0,
        use_cache=False,
    )
    if auto_map:
        record["auto_map"] = {
            "AutoConfig": "configuration_stream.StreamConfig",
            "AutoModelForCausalLM": "modeling_stream.Qwen3ForMedusa",
        }
    (directory / "config.json").write_text(json.dumps(record, indent=2))
    write_safetensors(directory, state, shards)
    if tokenizer:
        build_tokenizer(directory)
    return state, record


def write_safetensors(directory: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def golden_logits(state: dict[str, torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
    """The authors' forward written from the spec, independently of multistream: stock Qwen3 +
    channel_embedding[c] added to the token embedding, position = row, additive block-causal
    mask (-1e4 as their collator writes it). ``grid [R, C]`` -> logits ``[R, C, V]`` (fp32)."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(tiny_qwen3_config(attn_implementation="eager"))
    stock = {
        k: v.float() for k, v in state.items() if "channel_embedding" not in k and "gate_in_norm" not in k
    }
    model.load_state_dict(stock, strict=True)
    model.eval()
    R, C = grid.shape
    flat = grid.reshape(1, R * C)
    i = torch.arange(R * C)
    rows = i // C
    embeds = model.get_input_embeddings()(flat) + state["model.channel_embedding.weight"].float()[i % C][None]
    allowed = (rows[None, :] < rows[:, None]) | (i[None, :] == i[:, None])
    mask = torch.where(allowed, 0.0, -1e4)[None, None]
    with torch.no_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=rows[None])
    return out.logits[0].reshape(R, C, -1)


def write_authors_data(directory: Path, grids: list[list[list[int]]]) -> tuple[Path, Path]:
    """``dataset.jsonl`` (column-major token_ids) and a processed parquet (one column per stream)
    of the given grids ``[R][C]``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    jsonl = directory / "dataset.jsonl"
    with jsonl.open("w") as f:
        for grid in grids:
            columns = [[row[c] for row in grid] for c in range(len(STREAMS))]
            f.write(json.dumps({"num_rows": len(grid), "token_ids": columns}) + "\n")
    table = {name: [[row[c] for row in grid] for grid in grids] for c, name in enumerate(STREAMS)}
    table["num_rows"] = [len(g) for g in grids]
    parquet = directory / "processed" / "train-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), parquet)
    return jsonl, parquet
