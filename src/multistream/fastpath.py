"""Fast matrix products for forwards of a few tokens (one decode row), on CPU.

Decoding a row multiplies C (2-10) token vectors by every weight matrix. With MKL, the kernel
that ``F.linear(x, W)`` (``x @ W.T``) picks for 2-4 rows is several times slower than for one
row, although the work is memory-bound and should cost the same: the LM head of SmolLM2
(49152 x 576) takes ~45 ms for 3 rows against ~13 ms for one. Computing ``(W @ x.T).T``
instead (with 2-3 rows padded to 4, MKL's fastest thin shape) streams the weight once with a
kernel suited to a thin right-hand side. It computes the
same dot products in another summation order, so results agree with ``F.linear`` to fp32
rounding (max abs difference ~5e-6 on the LM head), exactly as ``F.linear`` on 3 rows already
differs from ``F.linear`` on each row alone. Greedy decoding gives the same tokens with and
without it (``tests/test_engine.py``); the benchmark reports both differences on every run.

Which kernel wins depends on the machine, the BLAS build and the load: with torch 2.13 on a
loaded 2-core Xeon, ``F.linear`` took 19 ms for 3 rows of the LM head and the transposed
product 41 ms, the reverse of the earlier measurement above. So the engine does not assume:
:func:`fast_path_pays` times both kernels once per process, model and token count on the
model's own weight shapes (best of a few runs, so load spikes do not decide) and the decode
backend uses the fast path only where it measured faster.

:func:`small_row_matmul` applies this to every ``nn.Linear`` of a model for the duration of a
``with`` block, by overriding the instances' ``forward`` and restoring them afterwards. It
changes no class and no other model, so training elsewhere in the process is unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_MAX_ROWS", "fast_path_pays", "small_row_forward", "small_row_linear", "small_row_matmul"]

# Up to this many token vectors per forward use the transposed product. Above it MKL's
# ordinary GEMM is as fast or faster (see docs/performance.md).
DEFAULT_MAX_ROWS = 8


# MKL's kernel for a right-hand side of 2 or 3 columns is slower than for 4 (LM head of SmolLM2,
# 1 thread: 28 / 36 / 19 ms for 2 / 3 / 4 rows), so such inputs get zero rows up to this count.
_PAD_TO = 4


def small_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` computed as ``(W @ x.T).T``: ``[..., D_in] -> [..., D_out]``."""
    flat = x.reshape(-1, x.shape[-1])  # [N, D_in]
    n = flat.shape[0]
    if 1 < n < _PAD_TO:
        flat = torch.cat([flat, flat.new_zeros(_PAD_TO - n, flat.shape[1])])  # [4, D_in]
    # [D_out, N] -> [N, D_out]; made contiguous because later kernels are slower on the
    # transposed strides than this small copy costs.
    out = torch.matmul(weight, flat.T).T[:n].contiguous()  # [N, D_out]
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


# (model id, token count, threads) -> whether the fast path measured faster.
_PAYS: dict[tuple[int, int, int], bool] = {}


def _best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def fast_path_pays(model: nn.Module, tokens: int, repeats: int = 3) -> bool:
    """Whether :func:`small_row_linear` beats ``F.linear`` for forwards of ``tokens`` token
    vectors through ``model``'s ``nn.Linear`` layers on this machine, measured once and cached.

    Every distinct CPU weight shape is timed with both kernels (best of ``repeats``, after a
    warm-up), weighted by how many layers have it; the fast path must win by 10 %.
    """
    key = (id(model), tokens, torch.get_num_threads())
    if key not in _PAYS:
        shapes: dict[tuple, list] = {}
        for module in model.modules():
            if type(module) is nn.Linear and module.weight.device.type == "cpu":
                entry = shapes.setdefault((tuple(module.weight.shape), module.weight.dtype), [module, 0])
                entry[1] += 1
        linear_ms = fast_ms = 0.0
        with torch.inference_mode():
            for module, count in shapes.values():
                x = torch.randn(tokens, module.in_features, dtype=module.weight.dtype)
                F.linear(x, module.weight), small_row_linear(x, module.weight)  # warm-up
                linear_ms += count * _best_ms(lambda: F.linear(x, module.weight), repeats)  # noqa: B023
                fast_ms += count * _best_ms(lambda: small_row_linear(x, module.weight), repeats)  # noqa: B023
        _PAYS[key] = bool(shapes) and fast_ms < 0.9 * linear_ms
    return _PAYS[key]


def small_row_forward(
    module: nn.Linear, max_rows: int = DEFAULT_MAX_ROWS
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A replacement ``forward`` for ``module`` that uses :func:`small_row_linear` for inputs of
    at most ``max_rows`` token vectors on CPU (made once, swapped in per forward by a backend)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.numel() // x.shape[-1] <= max_rows:
            return small_row_linear(x, module.weight, module.bias)
        return F.linear(x, module.weight, module.bias)

    return forward


@contextmanager
def small_row_matmul(
    model: nn.Module, max_rows: int = DEFAULT_MAX_ROWS, enabled: bool = True
) -> Iterator[None]:
    """Within the block, ``nn.Linear`` layers of ``model`` use :func:`small_row_linear` for
    inputs of at most ``max_rows`` token vectors on CPU.

    Args:
        model: any module; its ``nn.Linear`` submodules are patched (per instance).
        max_rows: largest number of token vectors (product of the leading dims) to reroute.
        enabled: False makes this a no-op, so callers can keep one code path.

    Example:
        >>> layer = nn.Linear(4, 3)
        >>> with small_row_matmul(layer):
        ...     y = layer(torch.ones(2, 4))
    """
    if not enabled:
        yield
        return
    patched: list[tuple[nn.Linear, object | None]] = []
    try:
        for module in model.modules():
            # Only plain nn.Linear: subclasses (quantised, LoRA) have forwards of their own.
            if type(module) is nn.Linear:
                patched.append((module, module.__dict__.get("forward")))
                module.forward = small_row_forward(module, max_rows)
        yield
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
