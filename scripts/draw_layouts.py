"""Draw docs/layout-a.png and docs/layout-b.png: both layouts as cells (stream, step), with the
keys one query sees. The visibility comes from the library's own masks, not from the drawing.

    .venv/bin/python scripts/draw_layouts.py      # needs matplotlib (not a runtime dependency)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

from multistream.layout import BlocksExample, BlocksLayout, CellIndex, GridLayout

DOCS = Path(__file__).resolve().parent.parent / "docs"
SEEN, QUERY, HIDDEN, OTHER = "#9ecae1", "#fd8d3c", "#eeeeee", "#ffffff"


def _cell(ax, x, y, text, colour, dashed=False):
    ax.add_patch(Rectangle((x, y), 0.95, 0.9, facecolor=colour, edgecolor="#555555",
                           linestyle="--" if dashed else "-", linewidth=0.8))  # fmt: skip
    ax.text(x + 0.47, y + 0.45, text, ha="center", va="center", fontsize=8, family="monospace")


def draw_grid() -> None:
    user = ["What", " is", " 2", "+2", "?", "-", "-", "-", "-"]
    assistant = ["-", "-", "-", " It", "'s", " 4", ".", "<e>", "-"]
    R, C = len(user), 2
    rows = torch.arange(R).repeat_interleave(C)[None]
    index = torch.arange(R * C)[None]
    ids = torch.tensor([[0 if (user, assistant)[c][r] == "-" else 1 for r in range(R) for c in range(C)]])
    layout = GridLayout(hide_silence=True)
    visible = ids.bool()  # hidden silence keys
    cells = CellIndex(rows, index % C, index, None, visible)
    allowed = layout.allowed(cells, cells)[0, 0]
    q = 6 * C + 1  # assistant at row 6
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for r in range(R):
        for c in range(C):
            i = r * C + c
            text = (user, assistant)[c][r]
            colour = QUERY if i == q else SEEN if allowed[q, i] else HIDDEN if not visible[0, i] else OTHER
            _cell(ax, r, C - 1 - c, text, colour, dashed=(c == 0 and text == "-"))
    ax.set_yticks([1.45, 0.45], ["user (0)", "assistant (1)"])
    ax.set_xticks([r + 0.47 for r in range(R)], [str(r) for r in range(R)])
    ax.set_xlabel("row r = RoPE position (all streams of a row share it); flat index i = r*C + c")
    ax.set_title("Layout A (row-major grid): query (assistant, row 6) sees every stream at rows < 6\n"
                 "grey = silence keys hidden (hide_silence); dashed = input silence, dropped from training",
                 fontsize=9)  # fmt: skip
    ax.set_xlim(-0.1, R)
    ax.set_ylim(-0.1, C)
    ax.set_frame_on(False)
    fig.tight_layout()
    fig.savefig(DOCS / "layout-a.png", dpi=110)


def draw_blocks() -> None:
    names = {1: "<s>", 2: "<e>", 0: "PAD"}
    system = [1, 11, 12, 2]
    user = [1, 13, 14, 15, 16, 17, 2]
    heads = [[1, 20, 21, 22, 23, 2], [1, 30, 31, 32, 33, 34, 35, 36, 2]]
    words = {11: "sys", 12: "\\n", 13: "usr", 14: "What", 15: " is", 16: " 2+2", 17: "?",
             20: "ast", 21: " Let", 22: " me", 23: " 4", 30: "ast", 31: " Check", 32: "ing",
             33: " the", 34: " sum", 35: ":", 36: " ok"}  # fmt: skip
    ex = BlocksExample(system, user, heads, [2, 2])
    layout = BlocksLayout(drop_invisible=False)
    batch = layout.collate([ex], pad_id=0)
    T = batch["input_ids"].shape[1]
    index = torch.arange(T)[None]
    q_cells = layout.cell_index(batch["position_ids"], batch["stream_ids"], index, batch["block_part"], False)
    k_cells = layout.cell_index(batch["position_ids"], batch["stream_ids"], index, batch["block_part"], True)
    allowed = layout.allowed(q_cells, k_cells)[0, 0]
    ys, streams, part = batch["position_ids"][0], batch["stream_ids"][0], batch["block_part"][0]
    q = int(((streams == 2) & (ys == 8)).nonzero()[0])
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for i in range(T):
        tok = int(batch["input_ids"][0, i])
        text = names.get(tok, words.get(tok, str(tok)))
        colour = QUERY if i == q else SEEN if allowed[q, i] else OTHER
        _cell(ax, int(ys[i]), 3 - int(streams[i]), text, colour, dashed=bool(part[i] == 2))
    ax.set_yticks([3.45, 2.45, 1.45, 0.45], ["system (0)", "user (1)", "head 0 (2)", "head 1 (3)"])
    ax.set_xticks([y + 0.47 for y in range(int(ys.max()) + 1)], [str(y) for y in range(int(ys.max()) + 1)])
    ax.set_xlabel("step y = RoPE position; the system block fills y < y0 = 4, every other block starts at y0")
    ax.set_title("Layout B (y-aligned ChatML blocks): query (head 0, y = 8) sees the system block, its own\n"
                 "block's past and the other blocks at y < 8; dashed = trailing PAD, left out of training",
                 fontsize=9)  # fmt: skip
    ax.set_xlim(-0.1, int(ys.max()) + 1)
    ax.set_ylim(-0.1, 4)
    ax.set_frame_on(False)
    fig.tight_layout()
    fig.savefig(DOCS / "layout-b.png", dpi=110)


if __name__ == "__main__":
    draw_grid()
    draw_blocks()
