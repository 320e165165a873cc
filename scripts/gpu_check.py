"""GPU readiness check for the authors' models: a randomly initialised model of the real
Stream-8B shape (Qwen3-8B + a 10-stream embedding), in bf16, decoded by our engine.

Run on a machine with a GPU (minutes; needs ~20 GB of GPU memory):

    python scripts/gpu_check.py --json gpu_check.json

and on CPU, as the test suite does, with a tiny model of the same structure:

    python scripts/gpu_check.py --tiny --device cpu

It reports, as one JSON object:

* ``exact``: the wrapped model against a golden reference written here from the spec (stock
  Qwen3 driven with ``inputs_embeds`` = token + stream embedding, position = row, an explicit
  additive block-causal mask); cached row-by-row decoding against the full forward; and greedy
  engine decoding against the argmax of one full forward over the finished grid (teacher-forced
  agreement). bf16 sums round differently in different kernels, so agreement is reported as a
  fraction and a max logit difference, with a pass threshold.
* ``rows_per_s``: engine decode speed for one session (warm start header, a 20-word prompt,
  then generated rows) and for a batch of 4 sessions.
* ``memory``: weights and peak allocated memory.

Random weights make the text meaningless; shape, speed, memory and exactness are what count.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

# The real Qwen3-8B text config (hidden 4096, 36 layers, 32 query / 8 key-value heads).
QWEN3_8B = dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
)  # fmt: skip
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
)  # fmt: skip
SILENCE = 481
PROMPT_WORDS = 20


class _IdTokenizer:
    """Random weights need no vocabulary: a cell's text is its id."""

    def decode(self, ids, **_):
        return " ".join(str(i) for i in ids)

    def encode(self, text, add_special_tokens=False):
        return [int(t) for t in text.split()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(shape: dict, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from multistream.authors import authors_schema
    from multistream.model import MultiStreamConfig, MultiStreamLM

    torch.manual_seed(seed)
    config = Qwen3Config(**shape, attn_implementation="sdpa")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: an 8B fp32 copy would need 32 GB
    try:
        with torch.device(device):
            base = Qwen3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(old)
    model = MultiStreamLM(base, MultiStreamConfig(schema=authors_schema(SILENCE))).eval()
    with torch.no_grad():
        model.stream_embedding.weight.normal_(0.0, 0.02)
    return model


def golden_logits(model, grid: torch.Tensor) -> torch.Tensor:
    """The authors' forward from the spec, independent of MultiStreamLM.forward: ``[R, C, V]``."""
    base = model.get_base_model()
    R, C = grid.shape
    i = torch.arange(R * C, device=grid.device)
    rows = i // C
    embeds = base.get_input_embeddings()(grid.reshape(1, -1)) + model.stream_embedding.weight[i % C][None]
    allowed = (rows[None, :] < rows[:, None]) | (i[None, :] == i[:, None])
    mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=grid.device)
    mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[None, None]
    with torch.no_grad():
        out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=rows[None])
    return out.logits[0].reshape(R, C, -1).float()


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {
        "max_abs_logit_diff": float((a.float() - b.float()).abs().max()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }


def check_exactness(model, device: torch.device, seed: int, rows: int = 24) -> dict:
    from multistream.engine import generate

    C = model.num_streams
    vocab = model.get_base_model().config.vocab_size
    grid = torch.randint(0, min(vocab, 30000), (rows, C), generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        ours = model(grid[None]).logits[0].float()
        out = model(grid[None, :8], use_cache=True)
        parts, cache = [out.logits[0]], out.cache
        for r in range(8, rows):
            out = model(grid[None, r : r + 1], cache=cache, use_cache=True)
            parts.append(out.logits[0])
            cache = out.cache
    cached = torch.cat(parts).float()
    golden = _agreement(ours, golden_logits(model, grid))
    incremental = _agreement(cached, ours)

    tok = _IdTokenizer()
    prompt = " ".join(str(t) for t in grid[:PROMPT_WORDS, 0].tolist())
    result = generate(model, tok, {"User": prompt}, max_rows=32, stop_silent_rows=0, temperature=0.0)
    ids = result.grid.ids.to(device)
    with torch.no_grad():
        full = model(ids[None]).logits[0]
    generated = model.schema.generated_indices
    engine_agree = float((full[:-1].argmax(-1)[:, generated] == ids[1:, generated]).float().mean())
    return {
        "golden_vs_wrapper": golden,
        "cached_vs_full": incremental,
        "engine_greedy_vs_full_argmax": engine_agree,
    }


def measure_speed(model, device: torch.device, rows: int, batch: int) -> dict:
    from multistream.authors import WARM_START_HEADER, authors_presets
    from multistream.engine import SessionBatch, SessionConfig

    tok = _IdTokenizer()
    presets = authors_presets("warm").merged(max_rows=rows, stop_silent_rows=0, temperature=0.8)
    header_rows = len(WARM_START_HEADER)
    # Header cells are texts; with an id tokenizer use fixed ids of the same layout instead.
    header = torch.full((header_rows, model.num_streams), SILENCE, dtype=torch.long)
    header[:, 1:] = torch.arange(1000, 1000 + header_rows * (model.num_streams - 1)).view(header_rows, -1) % (
        model.get_base_model().config.vocab_size
    )
    options = presets.session_kwargs()
    out = {}
    for size in (1, batch):
        sessions = SessionBatch(model, tok, size, SessionConfig.from_kwargs(**options, seed=0))
        sessions.prefill([header] * size)
        for s in sessions.sessions:
            s.feed("User", " ".join(str(100 + w) for w in range(PROMPT_WORDS)))
            s.close()
        sessions.step()  # first step includes the header prefill
        _sync(device)
        start, steps = time.perf_counter(), 0
        while steps < rows - 1 and any(s.stop is None for s in sessions.sessions):
            sessions.step()
            steps += 1
        _sync(device)
        seconds = time.perf_counter() - start
        out[f"batch{size}"] = {"rows": steps, "rows_per_s": steps / seconds, "session_rows_per_s": steps * size / seconds}
    return out


def memory(model, device: torch.device) -> dict:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"weights_gb": params / 1e9, "parameters": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        out["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        out["device_total_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    else:
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (CPU, tests)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--rows", type=int, default=64, help="generated rows per speed run")
    parser.add_argument("--batch", type=int, default=4, help="sessions of the batched speed run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-agreement", type=float, default=0.98, help="pass threshold for top-1 agreement")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    model = build(TINY if args.tiny else QWEN3_8B, device, dtype, args.seed)
    built = time.perf_counter() - started
    report = {
        "shape": "tiny" if args.tiny else "qwen3-8b",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "build_s": built,
        "exact": check_exactness(model, device, args.seed),
        "speed": measure_speed(model, device, args.rows, args.batch),
        "memory": memory(model, device),
        "torch": torch.__version__,
    }
    exact = report["exact"]
    report["pass"] = bool(
        exact["golden_vs_wrapper"]["top1_agreement"] >= args.min_agreement
        and exact["cached_vs_full"]["top1_agreement"] >= args.min_agreement
        and exact["engine_greedy_vs_full_argmax"] >= args.min_agreement
    )
    report["total_s"] = time.perf_counter() - started
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
