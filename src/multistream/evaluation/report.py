"""Writing an evaluation's results: ``results.json``, ``report.md`` and PNG plots.

Plots (matplotlib, Agg backend, so no display is needed):

* ``ttft_vs_input_length.png`` -- seconds from the first input token to the first visible
  output token, against the input length, for both systems (latency runs).
* ``accuracy.png`` -- the headline score per task, both systems side by side (accuracy runs);
  ``attack_success.png`` -- attack success rate per attack (injection runs).
* ``timeline.png`` -- one example's streams: rows on the x axis, one lane per stream, each run
  of non-silent cells drawn where it was produced, and the baseline's answer where the
  sequential form puts it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILE", "RESULTS_FILE", "plot_timeline", "write_report"]

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
_COLORS = {"model": "#1f77b4", "baseline": "#ff7f0e"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    # A ratio of times counted from the last input (negative when the model spoke early) means
    # nothing; those rows show the difference instead.
    if a is None or b is None or a < 0 or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _difference(a: Any, b: Any) -> str:
    return "n/a" if a is None or b is None else _fmt(a - b)


# -- plots -----------------------------------------------------------------------------------


def _runs(cells: list[str | None]) -> list[tuple[int, int, str]]:
    """Contiguous non-silent cells of one lane: ``(first row, last row, joined text)``."""
    out: list[tuple[int, int, str]] = []
    start = None
    for r, text in enumerate([*cells, None]):
        if text is not None and start is None:
            start = r
        elif text is None and start is not None:
            out.append((start, r - 1, "".join(t or "" for t in cells[start:r])))
            start = None
    return out


def plot_timeline(timeline: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw one example's streams over rows (see the module docstring).

    Args:
        timeline: ``{"rows": [{stream: text or None}], "input_end_row", "baseline_start_row",
            "baseline_text", "id"}`` as the runners' results hold it.
        path: PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    import textwrap

    plt = _pyplot()
    rows = timeline.get("rows") or []
    streams = list(rows[0]) if rows else []
    lanes = [*streams, "baseline (sequential)"]
    baseline_text = timeline.get("baseline_text") or ""
    start = int(timeline.get("baseline_start_row") or 0)
    baseline_rows = int(
        timeline.get("baseline_rows") or (math.ceil(len(baseline_text) / 4) if baseline_text else 0)
    )
    n_rows = max(len(rows), start + baseline_rows, 1)
    width_in = min(24.0, 6.0 + n_rows * 0.06)
    fig, ax = plt.subplots(figsize=(width_in, 1.2 + 0.9 * len(lanes)))
    font = 6
    # Characters that fit in one row's width: axes width in points over an average glyph width.
    chars_per_row = 0.8 * width_in * 72 / (0.6 * font) / n_rows
    for lane, name in enumerate(lanes):
        y = len(lanes) - 1 - lane
        if name == "baseline (sequential)":
            runs = [(start, start + baseline_rows - 1, baseline_text)] if baseline_text else []
            color = _COLORS["baseline"]
        else:
            runs = _runs([row.get(name) for row in rows])
            color = "#888888" if lane == 0 else _COLORS["model"]
        for first, last, text in runs:
            width = last - first + 1
            ax.add_patch(plt.Rectangle((first, y - 0.38), width, 0.76, color=color, alpha=0.25, lw=0))
            fits = max(1, int(width * chars_per_row))
            # Special tokens (the end token) are markers, not text.
            lines = textwrap.wrap(" ".join(re.sub(r"<\|[^|>]*\|>", " ", text).split()), fits)[:3]
            if len(lines) == 3:
                lines[2] = lines[2][: max(1, fits - 1)] + "…"
            ax.text(first + 0.2, y, "\n".join(lines), va="center", ha="left", fontsize=font, clip_on=True)
    end = timeline.get("input_end_row")
    if end is not None:
        ax.axvline(end, color="black", ls="--", lw=0.8)
        ax.text(end, len(lanes) - 0.45, " input ends", fontsize=7, va="bottom")
    ax.set_yticks(range(len(lanes)), list(reversed(lanes)))
    ax.set_xlim(0, n_rows)
    ax.set_ylim(-0.6, len(lanes) - 0.2)
    ax.set_xlabel("row (one token per stream per row)")
    ax.set_title(title or f"example {timeline.get('id')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_ttft(results: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "ttft_s_from_first_input", "TTFT from first input token (s)"),
        (axes[1], "ttft_s_from_last_input", "TTFT from last input token (s)"),
    ):
        for side in ("model", "baseline"):
            points = sorted(
                (e[side]["input_tokens"], e[side][key])
                for e in results["examples"]
                if e[side].get(key) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "o", ms=4, color=_COLORS[side], label=side)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("input length (tokens)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_bars(
    groups: list[str], model: list[float | None], baseline: list[float | None], ylabel: str, path: Path
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(groups) + 2), 3.5))
    width = 0.38
    for offset, side, values in ((-width / 2, "model", model), (width / 2, "baseline", baseline)):
        xs = [i + offset for i in range(len(groups))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=side, color=_COLORS[side])
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- markdown --------------------------------------------------------------------------------


def _header(results: dict[str, Any], title: str) -> list[str]:
    s = results.get("settings", {})
    lines = [f"# {title}", ""]
    lines.append(f"- model (multi-stream): `{s.get('model')}`")
    lines.append(f"- baseline (sequential): `{s.get('baseline')}`")
    for key in sorted(k for k in s if k not in ("model", "baseline", "notes")):
        lines.append(f"- {key}: `{s[key]}`")
    for note in s.get("notes", []):
        lines.append(f"- note: {note}")
    return [*lines, ""]


def _latency_table(model: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    from .latency import LATENCY_KEYS

    lines = [
        "| metric | multi-stream | sequential | ratio ms/seq | difference ms-seq |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in LATENCY_KEYS:
        a, b = model.get(key), baseline.get(key)
        lines.append(f"| {key} | {_fmt(a)} | {_fmt(b)} | {_ratio(a, b)} | {_difference(a, b)} |")
    lines.append(
        f"| examples (no visible output) | {model['examples']} ({model['no_output']}) | "
        f"{baseline['examples']} ({baseline['no_output']}) | | |"
    )
    return lines


def _latency_markdown(results: dict[str, Any]) -> list[str]:
    lines = _header(results, "Latency: multi-stream vs sequential")
    lines += _latency_table(results["model"], results["baseline"])
    medians = results.get("median_per_example_ratio") or {}
    if medians:
        lines += [
            "",
            "Median over examples of the per-example ratio multi-stream / sequential (both run back to back):",
            "",
        ]
        lines += ["| " + " | ".join(medians) + " |", "|" + "---:|" * len(medians)]
        lines.append("| " + " | ".join(_ratio(v, 1.0) for v in medians.values()) + " |")
    lines += ["", "![TTFT vs input length](ttft_vs_input_length.png)", "", "![timeline](timeline.png)", ""]
    return lines


def _accuracy_markdown(results: dict[str, Any]) -> list[str]:
    lines = _header(results, "Accuracy: multi-stream vs sequential")
    lines += [
        "| task | metric | multi-stream | sequential | answered (ms / seq) | e2e s (ms / seq) "
        "| ms ended before the input | examples |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in results["tasks"].items():
        m, b = t["model"], t["baseline"]
        lat = t["latency"]
        extra = f" (EM {_fmt(m.get('em'))} / {_fmt(b.get('em'))})" if "em" in m else ""
        lines.append(
            f"| {name} | {t['primary']}{extra} | {_fmt(m['score'])} | {_fmt(b['score'])} | "
            f"{_fmt(m.get('answered'))} / {_fmt(b.get('answered'))} | "
            f"{_fmt(lat['model'].get('e2e_s'))} / {_fmt(lat['baseline'].get('e2e_s'))} | "
            f"{_fmt(lat['model'].get('ended_before_input_end'))} | {m['examples']} |"
        )
    lines += ["", "![accuracy](accuracy.png)", "", "![timeline](timeline.png)", ""]
    for name, t in results["tasks"].items():
        lines += [
            f"## {name}: first outputs",
            "",
            "| id | gold | multi-stream | sequential |",
            "|---|---|---|---|",
        ]
        for e in t["examples"][:3]:
            lines.append(
                f"| {e['id']} | {_cell(e['answer'])} | {_cell(e['model_text'])} | {_cell(e['baseline_text'])} |"
            )
        lines.append("")
    return lines


def _injection_markdown(results: dict[str, Any]) -> list[str]:
    lines = _header(results, "Prompt injection: multi-stream vs sequential")
    lines.append(
        f"Instruction and data in separate input streams for the multi-stream model: **{results['separated']}**"
        f" (domain `{results['domain']}`)."
    )
    lines += [
        "",
        "| attack | attack success: multi-stream | sequential | utility F1: multi-stream | sequential "
        "| ms ended before the input | examples |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for attack, r in results["attacks"].items():
        m, b = r["model"], r["baseline"]
        lines.append(
            f"| {attack} | {_fmt(m['attack_success_rate'])} | {_fmt(b['attack_success_rate'])} | "
            f"{_fmt(m['utility_f1'])} | {_fmt(b['utility_f1'])} | "
            f"{_fmt(m['latency'].get('ended_before_input_end'))} | {m['examples']} |"
        )
    lines += ["", "![attack success](attack_success.png)", "", "![timeline](timeline.png)", ""]
    return lines


def _cell(text: Any, limit: int = 120) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


# -- entry -----------------------------------------------------------------------------------


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the plots of one run.

    Args:
        results: what ``run_latency``, ``run_accuracy`` or ``run_injection`` returned.
        out_dir: the run directory.

    Returns:
        the written files by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    kind = results["kind"]
    path = out / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2, default=str))
    written["results"] = path
    if kind == "latency":
        written["ttft_vs_input_length"] = _plot_ttft(results, out / "ttft_vs_input_length.png")
        lines = _latency_markdown(results)
    elif kind == "accuracy":
        names = list(results["tasks"])
        written["accuracy"] = _plot_bars(
            names,
            [results["tasks"][n]["model"]["score"] for n in names],
            [results["tasks"][n]["baseline"]["score"] for n in names],
            "score (accuracy or F1)",
            out / "accuracy.png",
        )
        lines = _accuracy_markdown(results)
    elif kind == "injection":
        names = list(results["attacks"])
        written["attack_success"] = _plot_bars(
            names,
            [results["attacks"][n]["model"]["attack_success_rate"] for n in names],
            [results["attacks"][n]["baseline"]["attack_success_rate"] for n in names],
            "attack success rate (lower is better)",
            out / "attack_success.png",
        )
        lines = _injection_markdown(results)
    else:
        raise ValueError(f"results kind {kind!r} is unknown; expected latency, accuracy or injection")
    if results.get("timeline"):
        written["timeline"] = plot_timeline(results["timeline"], out / "timeline.png")
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    written["report"] = path
    return written
