"""The ``multistream`` command. Each subcommand is thin: parse, call the library, print.

Heavy imports (torch, transformers) happen inside commands so ``multistream --help`` is instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperCommand

app = typer.Typer(
    name="multistream",
    help="Multi-stream language models: convert data, train, run live, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich's option table truncated option names at 80 columns (--stop-silent-r…).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"multistream {version('multistream')}")
        except PackageNotFoundError:
            typer.echo("multistream (not installed as a package)")
        raise typer.Exit()


def _quiet_libraries() -> None:
    """Keep stderr for our own messages: no weight-loading bars, no library warnings."""
    import logging
    import os
    import warnings

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch)\b")
    for name in ("transformers", "peft", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="show library progress bars and warnings on stderr")
    ] = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit"),
    ] = None,
) -> None:
    """Multi-stream language models: convert data, train, run live, measure."""
    if not verbose:
        _quiet_libraries()


def _registry_help(**names: Callable[[], list[str]]) -> type[TyperCommand]:
    """A command class whose option help fills ``{names}`` from a registry when help is shown.

    The registries (tasks, policies, attacks) import torch, which ``multistream --help`` must not,
    so the names are read only when this command's help is printed.
    """

    class RegistryHelp(TyperCommand):
        def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            for param in self.params:
                text = getattr(param, "help", None)
                if param.name in names and text and "{names}" in text:
                    param.help = text.replace("{names}", ", ".join(names[param.name]()))
            super().format_help(ctx, formatter)

    return RegistryHelp


def _task_names() -> list[str]:
    from .evaluation.tasks import task_names

    return task_names()


def _policy_names() -> list[str]:
    from .data.convert import POLICIES

    return list(POLICIES)


def _attack_names() -> list[str]:
    from .evaluation.injection import ATTACKS

    return ["none", *ATTACKS]


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="grid JSONL file", exists=True, dir_okay=False)],
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="tokenizer to show cells with (embedded name or local path); default: smollm2-135m"
        ),
    ] = None,
    index: Annotated[int, typer.Option("--index", "-i", help="which record (0-based)")] = 0,
    max_rows: Annotated[int, typer.Option(help="show at most this many rows")] = 200,
) -> None:
    """Show one grid of a JSONL file as a table: rows x streams, silence dimmed."""
    from rich.console import Console

    from .data.io import GridFileError, iter_grids
    from .loading import BaseModelError, load_tokenizer
    from .render import grid_table

    try:
        tok = load_tokenizer(tokenizer or "smollm2-135m")
    except BaseModelError as e:
        _fail(str(e))
    grid, count = None, 0
    try:
        # With the tokenizer: ids are checked against its vocabulary, and a text-only grid
        # (no token ids) is tokenized for display.
        for count, candidate in enumerate(iter_grids(path, tokenizer=tok), start=1):
            if count - 1 == index:
                grid = candidate
                break
    except GridFileError as e:
        _fail(str(e))
    if grid is None:
        _fail(f"{path} has no record {index}: it holds {count} record(s)")
    Console().print(grid_table(grid, tok, max_rows=max_rows, title=f"{path} [{index}]"))


@app.command(cls=_registry_help(policy=_policy_names))
def convert(
    input: Annotated[Path, typer.Option("--input", help="dataset file", exists=True, dir_okay=False)],
    format: Annotated[str, typer.Option("--format", help="dataset format (see docs/data.md), e.g. alpaca")],
    out: Annotated[Path, typer.Option("--out", help="grid JSONL to write (atomically)")],
    policy: Annotated[str, typer.Option(help="conversion policy: {names}")] = "wait-k",
    k: Annotated[int, typer.Option("--k", help="wait-k: input rows before the bridging utterance")] = 8,
    schema: Annotated[str, typer.Option(help="streams, e.g. user,assistant or system,data,assistant")] = (
        "user,assistant"
    ),
    tokenizer: Annotated[str, typer.Option(help="embedded model name or local path")] = "smollm2-135m",
    limit: Annotated[int | None, typer.Option(help="convert at most this many examples")] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="count malformed records instead of failing")
    ] = False,
    max_rows: Annotated[int | None, typer.Option(help="drop grids with more rows")] = None,
    end_inputs: Annotated[bool, typer.Option(help="close each input field with the end token")] = True,
    layout: Annotated[
        str, typer.Option(help="grid (Layout A rows) or blocks (Layout B ChatML blocks; no --schema/--k)")
    ] = "grid",
    max_tokens: Annotated[int | None, typer.Option(help="blocks: drop examples with more tokens")] = None,
) -> None:
    """Convert a sequential dataset into multi-stream grids with a deterministic policy.

    An input with no usable example is an error (exit 2) and writes nothing.
    """
    if out.is_dir():
        _fail(f"--out {out} is a directory; give a file to write, e.g. --out {out / 'grids.jsonl'}")
    if layout == "blocks":
        _convert_blocks(input, format, out, policy, tokenizer, limit, skip_bad, max_tokens)
        return
    if layout != "grid":
        _fail(f"--layout {layout!r} is unknown; choose grid or blocks")
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from .data.convert import ConversionError, ConvertReport, convert_examples
    from .data.io import GridFileError, write_grids
    from .data.loaders import DatasetError, LoadReport, load_dataset_file
    from .loading import BaseModelError, load_tokenizer
    from .schema import SchemaError

    start = time.perf_counter()
    load_report, conv_report = LoadReport(), ConvertReport()
    errors = Console(stderr=True)
    try:
        tok = load_tokenizer(tokenizer)
        examples = load_dataset_file(input, format, skip_bad=skip_bad, limit=limit, report=load_report)
        if not examples:
            for where, message in load_report.skipped[:3]:
                errors.print(f"[yellow]skipped[/] {where}: {message}", highlight=False)
            _fail(
                f"{input}: no examples to convert ({len(load_report.skipped)} malformed record(s) skipped); "
                f"check the file and --format {format}. Nothing was written."
            )
        # A bar on stderr while converting (SQuAD takes 10-60 s); it disappears when done.
        columns = (TextColumn("convert"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=errors, transient=True) as bar:
            task = bar.add_task("convert", total=len(examples))

            def counted():  # type: ignore[no-untyped-def]
                for example in examples:
                    yield example
                    bar.advance(task)

            grids = convert_examples(
                counted(), policy=policy, schema=schema, tokenizer=tok, k=k, max_rows=max_rows,
                end_inputs=end_inputs, report=conv_report,
            )  # fmt: skip
        if not grids:
            _fail(
                f"{input}: all {len(examples)} examples were dropped ({dict(conv_report.dropped)}); "
                "nothing was written. Raise --max-rows or check the policy."
            )
        written = write_grids(out, grids, tok)
    except (DatasetError, ConversionError, SchemaError, BaseModelError, GridFileError) as e:
        _fail(str(e))
    seconds = time.perf_counter() - start
    rows = [g.num_rows for g in grids]
    table = Table(title=f"{input} -> {out}", show_header=False)
    table.add_row("records skipped as malformed", str(len(load_report.skipped)))
    table.add_row("examples loaded", str(len(examples)))
    table.add_row("grids kept (written)", str(written))
    for reason, count in sorted(conv_report.dropped.items()):
        table.add_row(f"dropped: {reason}", str(count))
    if rows:
        table.add_row("rows: mean / max", f"{sum(rows) / len(rows):.0f} / {max(rows)}")
    table.add_row("file size", f"{out.stat().st_size / 1e6:.1f} MB")
    table.add_row("time", f"{seconds:.1f} s")
    console = Console()
    console.print(table)
    for where, message in load_report.skipped[:5]:
        console.print(f"[yellow]skipped[/] {where}: {message}", highlight=False)


def _convert_blocks(
    input: Path, format: str, out: Path, policy: str, tokenizer: str, limit: int | None, skip_bad: bool,
    max_tokens: int | None,
) -> None:  # fmt: skip
    """``convert --layout blocks``: Layout B records (docs/grid-format.md)."""
    from rich.console import Console

    from .data.blocks import convert_blocks_examples
    from .data.blocks_io import write_blocks
    from .data.convert import ConversionError, ConvertReport
    from .data.loaders import DatasetError, LoadReport, load_dataset_file
    from .models import BaseModelError, load_tokenizer

    load_report, conv_report = LoadReport(), ConvertReport()
    try:
        tok = load_tokenizer(tokenizer)
        examples = load_dataset_file(input, format, skip_bad=skip_bad, limit=limit, report=load_report)
        records = convert_blocks_examples(examples, policy, tok, max_tokens=max_tokens, report=conv_report)
        written = write_blocks(out, records, tok)
    except (DatasetError, ConversionError, BaseModelError) as e:
        _fail(str(e))
    sizes = [r.example.num_tokens for r in records]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(conv_report.dropped.items())) or "none"
    stats = f"; tokens mean {sum(sizes) / len(sizes):.0f}, max {max(sizes)}" if sizes else ""
    Console().print(
        f"{input} -> {out}: {len(examples)} loaded, {written} written (Layout B, {policy}); "
        f"dropped: {dropped}; malformed skipped: {len(load_report.skipped)}{stats}",
        highlight=False,
    )


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML recipe (see recipes/)", exists=True, dir_okay=False)],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config field: key=value (value parsed as YAML); repeatable"),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the newest whole checkpoint in output_dir")
    ] = False,
) -> None:
    """Fine-tune a base model on grids (or the sequential baseline) as a YAML recipe says.

    Scale out with the same recipe: accelerate launch --multi_gpu --num_processes N -m multistream.cli
    train CONFIG (on CPU too, with use_cpu: true; see docs/training.md).
    """
    from .data.io import GridFileError
    from .training import TrainConfig, TrainConfigError, parse_overrides
    from .training import train as run_training

    try:
        cfg = TrainConfig.from_yaml(config, parse_overrides(set_ or []))
        final = run_training(cfg, resume_from_checkpoint=True if resume else None)
    except (TrainConfigError, GridFileError) as e:
        _fail(str(e))
    typer.echo(f"saved {final}")


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="saved multi-stream model with a LoRA adapter", exists=True)],
    target: Annotated[Path, typer.Argument(help="new directory for the merged full model")],
    format: Annotated[
        str, typer.Option("--format", help="multistream (merged full model) or authors (the paper's format)")
    ] = "multistream",
    max_shard_size: Annotated[
        str | None, typer.Option(help="authors: shard the weights, e.g. 5GB (default: one file)")
    ] = None,
) -> None:
    """Merge a LoRA adapter into its base and save a full multi-stream model, or write a
    10-stream model in the paper authors' format (--format authors)."""
    if format == "authors":
        from .authors.cli import export_authors_command

        export_authors_command(source, target, max_shard_size, _fail)
        return
    if format != "multistream":
        _fail(f"--format {format!r} is unknown; choose multistream or authors")
    from .loading import BaseModelError
    from .training import export_merged

    try:
        typer.echo(f"saved {export_merged(source, target)}")
    except BaseModelError as e:
        _fail(str(e))


@app.command("import")
def import_(
    source: Annotated[
        Path,
        typer.Argument(
            help="authors' model directory, or their dataset.jsonl / parquet / dataset directory", exists=True
        ),
    ],
    target: Annotated[Path, typer.Argument(help="new model directory, or grid JSONL file for data")],
    tokenizer: Annotated[
        str | None,
        typer.Option(help="data: tokenizer the ids were made with (model or tokenizer dir); checked"),
    ] = None,
    start: Annotated[
        str, typer.Option(help="model: default start mode of its presets, warm or seed")
    ] = "warm",
    limit: Annotated[int | None, typer.Option(help="data: read at most this many conversations")] = None,
) -> None:
    """Convert the paper authors' released models (Stream-8B/27B) or data (stream-data) to
    multistream's formats."""
    from .authors.cli import import_command

    import_command(source, target, tokenizer, start, limit, _fail)


def _presets(lm: object, **overrides: object) -> object:
    """The model's decoding presets (defaults when it has none) with the options given on the
    command line (None = not given) on top: one set of defaults for generate, chat and serve."""
    from .presets import DecodingPresets

    try:
        return DecodingPresets.load(lm).merged(**overrides)
    except (TypeError, ValueError) as e:
        _fail(str(e))
        raise  # unreachable: _fail exits


def _parse_inputs(items: list[str] | None) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep:
            _fail(f"--input {item!r}: expected STREAM=TEXT, e.g. --input user='What is 2+2?'")
        if not text.strip():
            _fail(
                f"--input {name.strip()}=...: the text is empty; give the question, e.g. --input user='What is 2+2?'"
            )
        inputs[name.strip()] = text
    return inputs


_PRESET = "default: the model's decoding presets"


@app.command()
def generate(
    model: Annotated[
        str,
        typer.Option(help="saved multi-stream directory, registered name, or base model (with --schema)"),
    ],
    input: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="STREAM=TEXT for an input stream (repeatable)"),
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="streams for a base model, e.g. user,assistant (untrained)")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="JSON lines: one per row, then a summary")
    ] = False,
    max_rows: Annotated[int | None, typer.Option(help=f"stop after this many rows ({_PRESET})")] = None,
    stop_silent_rows: Annotated[
        int | None,
        typer.Option(help=f"stop after this many all-silent rows once inputs are read, 0 = off ({_PRESET})"),
    ] = None,
    temperature: Annotated[float | None, typer.Option(help=f"0 = greedy ({_PRESET})")] = None,
    top_k: Annotated[int | None, typer.Option(help=f"0 = off ({_PRESET})")] = None,
    top_p: Annotated[float | None, typer.Option(help=f"1 = off ({_PRESET})")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed for sampling")] = None,
    silence_penalty: Annotated[
        float | None, typer.Option(help=f"logit penalty on output silence once inputs are read ({_PRESET})")
    ] = None,
    skip_silence: Annotated[
        bool | None,
        typer.Option(
            "--skip-silence/--no-skip-silence", help=f"hide silence keys from attention ({_PRESET})"
        ),
    ] = None,
    drop_silence: Annotated[bool, typer.Option(help="also drop silence from the KV cache")] = False,
    end_inputs: Annotated[
        bool, typer.Option(help="close each input with the end token, as converted training grids do")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's choice; 1 on a busy machine)")
    ] = None,
) -> None:
    """Decode live from input texts, printing rows as they arrive (a table, or JSON lines).

    An output stream ends at its end token (the tokenizer's eos, as in training data), which is
    never shown; the session stops once every answer ended or stayed silent.
    """
    import json
    import time

    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from .engine import Row, SessionConfig, generate
    from .models import BaseModelError, resolve_multistream
    from .render import cell_text
    from .server.live import answer_end_tokens, visible_text

    inputs = _parse_inputs(input)
    try:
        lm, tokenizer = resolve_multistream(model, schema)
        for name in inputs:
            if lm.schema[name].generated:
                inputs_names = [lm.schema.names[i] for i in lm.schema.input_indices]
                _fail(f"--input {name}=...: {name!r} is a generated stream; input streams: {inputs_names}")
        presets = _presets(
            lm, max_rows=max_rows, stop_silent_rows=stop_silent_rows, temperature=temperature, top_k=top_k,
            top_p=top_p, silence_penalty=silence_penalty, skip_silence=True if drop_silence else skip_silence,
        )  # fmt: skip
        end_tokens = answer_end_tokens(lm.schema, tokenizer)
        options = SessionConfig.from_kwargs(
            **presets.session_kwargs(),
            seed=seed,
            drop_silence=drop_silence,
            close_with_end_token=end_inputs,
            end_tokens=end_tokens,
        )
        start_rows = presets.start_rows(lm.schema, tokenizer)
    except (BaseModelError, ValueError, KeyError) as e:
        _fail(str(e))
    prefill = None if start_rows is None else torch.tensor(start_rows)
    names = lm.schema.names
    # What every front-end shows: silence and end tokens left out.
    shown: dict[str, str] = {name: "" for name in names}
    timing = {"start": time.perf_counter(), "first_visible": None}
    output_names = {s.name for s in lm.schema.streams if s.role.value == "output"}

    def track(row: Row) -> dict[str, str | None]:
        text = visible_text(row, end_tokens)
        for name, piece in text.items():
            shown[name] += piece or ""
            if piece and piece.strip() and name in output_names and timing["first_visible"] is None:
                timing["first_visible"] = time.perf_counter()
        return text

    def summary(result: object) -> dict[str, object]:
        out = result.summary()
        body = out["summary"]
        # A Layout B system block is prefilled, never streamed as rows: take its text from the result.
        for name, text in result.texts.items():
            if not shown.get(name) and lm.schema[name].role.value != "output":
                shown[name] = text
        body["streams"] = dict(shown)
        body["stop"] = result.stop
        body["wall_s"] = round(time.perf_counter() - timing["start"], 3)
        first = timing["first_visible"]
        body["first_visible_output_s"] = None if first is None else round(first - timing["start"], 3)
        return out

    if json_lines:

        def emit(row: Row) -> None:
            print(json.dumps({**row.to_json(), "text": track(row)}), flush=True)

        result = generate(lm, tokenizer, inputs, prefill=prefill, config=options, on_row=emit)
        print(json.dumps(summary(result)), flush=True)
        return
    table = Table(header_style="bold")
    table.add_column("row", justify="right", style="cyan", no_wrap=True)
    for stream in lm.schema.streams:
        table.add_column(f"{stream.name}\n[dim]{stream.role.value}[/]", no_wrap=True)
    silence = tokenizer.decode([lm.schema.require_silence_id()])

    with Live(table, refresh_per_second=12, vertical_overflow="visible") as live:

        def show(row: Row) -> None:
            text = track(row)
            cells = [
                Text(cell_text(silence), style="dim") if text[n] is None else Text(cell_text(text[n]))
                for n in names
            ]
            table.add_row(str(row.index), *cells)
            live.refresh()

        result = generate(lm, tokenizer, inputs, prefill=prefill, config=options, on_row=show)
    console = Console()
    console.line()  # Live leaves the cursor after the table when the output is not a terminal
    body = summary(result)["summary"]
    for name, text in shown.items():
        console.print(f"[bold]{name}:[/] {text.strip()}", highlight=False)
    console.print(
        f"[dim]{result.grid.num_rows} rows, stop: {result.stop}, first visible output row: "
        f"{result.first_visible_output_row} ({body['first_visible_output_s']} s), inputs closed at row: "
        f"{result.inputs_closed_row}, wall time {body['wall_s']} s[/]"
    )


bench_app = typer.Typer(help="Speed and memory measurements.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("decode")
def bench_decode(
    json_out: Annotated[
        bool, typer.Option("--json", help="print one JSON object instead of a table")
    ] = False,
    context: Annotated[int, typer.Option(help="context length in tokens for the per-step timings")] = 512,
    repeats: Annotated[int, typer.Option(help="timed repetitions per measurement (median)")] = 5,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice)")] = None,
) -> None:
    """Decode speed on the embedded SmolLM2: multi-stream rows vs plain HF steps, prefill,
    batching, and KV memory with and without silence dropping."""
    import json

    from rich.console import Console

    from .benchmarks.decode import DecodeBenchConfig, format_table, run_decode_bench

    errors = Console(stderr=True)
    results = run_decode_bench(
        DecodeBenchConfig(context=context, repeats=repeats, threads=threads),
        progress=lambda stage: errors.print(f"[dim]measuring {stage}...[/]"),
    )
    if json_out:
        print(json.dumps(results, indent=2))
    else:
        Console().print(format_table(results))


eval_app = typer.Typer(
    help="Latency, accuracy and injection robustness against a sequential baseline, side by side; monitorability of thinking streams.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

_EvalModel = Annotated[
    str, typer.Option("--model", help="multi-stream model: demo, a saved directory, or a base model to wrap")
]
_EvalBaseline = Annotated[
    str | None,
    typer.Option(
        "--baseline", help="sequential model (default: the model's own base, with its chat template)"
    ),
]
_EvalOut = Annotated[Path, typer.Option("--out", help="run directory: results.json, report.md, plots, cache")]
_EvalLimit = Annotated[int | None, typer.Option("--limit", help="examples (per task / attack)")]
_EvalSchema = Annotated[
    str | None, typer.Option("--schema", help="streams when --model is a base model (default user,assistant)")
]
_EvalDataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="folder of the shared data sets (default ../shared/data)")
]
_EvalThreads = Annotated[
    int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice)")
]
_EvalPenalty = Annotated[
    float | None,
    typer.Option("--silence-penalty", help=f"output silence penalty once the input ended ({_PRESET})"),
]
_EvalSilent = Annotated[
    int | None,
    typer.Option(
        "--stop-silent-rows", help=f"stop after this many silent rows once the input ended ({_PRESET})"
    ),
]


def _eval_run(kind: str, out: Path, **options: object) -> None:
    from dataclasses import fields

    from rich.console import Console

    from .evaluation import pipeline
    from .evaluation.tasks import TaskError
    from .loading import BaseModelError
    from .schema import SchemaError

    common = {f.name for f in fields(pipeline.EvalOptions)}
    try:
        getattr(pipeline, f"evaluate_{kind}")(
            pipeline.EvalOptions(out=out, **{k: v for k, v in options.items() if k in common}),
            **{k: v for k, v in options.items() if k not in common},
        )
    except (TaskError, BaseModelError, SchemaError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console = Console()
    for path in sorted(out.iterdir()):
        if path.suffix in (".json", ".md", ".png"):
            console.print(f"[green]wrote[/] {path}", highlight=False)


@eval_app.command("latency", cls=_registry_help(task=_task_names))
def eval_latency(
    model: _EvalModel,
    out: _EvalOut,
    baseline: _EvalBaseline = None,
    limit: _EvalLimit = 20,
    task: Annotated[str, typer.Option(help="whose prompts to stream in: {names}")] = "squad",
    rate: Annotated[
        float | None, typer.Option(help="input tokens per second (default: lockstep, one token per row)")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="budget after the input (default: the task's)")
    ] = None,
    schema: _EvalSchema = None,
    data_dir: _EvalDataDir = None,
    stop_silent_rows: _EvalSilent = None,
    threads: _EvalThreads = None,
    silence_penalty: _EvalPenalty = None,
) -> None:
    """TTFT (rows and seconds, from the first and the last input token), end-to-end time and
    average lagging of the multi-stream model vs the sequential baseline, in one run."""
    _eval_run(
        "latency", out, model=model, baseline=baseline, task=task, limit=limit, rate=rate,
        max_new_tokens=max_new_tokens, schema=schema, stop_silent_rows=stop_silent_rows, data_dir=data_dir,
        threads=threads, silence_penalty=silence_penalty,
    )  # fmt: skip


@eval_app.command("accuracy", cls=_registry_help(tasks=_task_names))
def eval_accuracy(
    model: _EvalModel,
    out: _EvalOut,
    baseline: _EvalBaseline = None,
    limit: _EvalLimit = 20,
    tasks: Annotated[
        str,
        typer.Option(help="comma-separated: {names}, or all"),
    ] = "all",
    max_new_tokens: Annotated[
        int | None, typer.Option(help="one budget for all tasks (default: per task)")
    ] = None,
    schema: _EvalSchema = None,
    data_dir: _EvalDataDir = None,
    stop_silent_rows: _EvalSilent = None,
    threads: _EvalThreads = None,
    silence_penalty: _EvalPenalty = None,
) -> None:
    """Task accuracy with the paper's prompts and scoring (SQuAD EM/F1, boxed answers, labels)."""
    names = None if tasks.strip() == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    _eval_run(
        "accuracy", out, model=model, baseline=baseline, tasks=names, limit=limit,
        max_new_tokens=max_new_tokens, schema=schema, stop_silent_rows=stop_silent_rows, data_dir=data_dir,
        threads=threads, silence_penalty=silence_penalty,
    )  # fmt: skip


@eval_app.command("injection", cls=_registry_help(attacks=_attack_names))
def eval_injection(
    model: _EvalModel,
    out: _EvalOut,
    baseline: _EvalBaseline = None,
    limit: _EvalLimit = 20,
    attacks: Annotated[
        str,
        typer.Option(help="comma-separated: {names}, or all"),
    ] = "all",
    domain: Annotated[str, typer.Option(help="id (attack after the data) or ood (before and after)")] = "id",
    benchmark: Annotated[
        str, typer.Option(help="struq (held-out StruQ set) or sep (SEP probes; attacks none, probe)")
    ] = "struq",
    batch_size: Annotated[
        int, typer.Option(help="examples decoded together (Layout B models; scores texts, not latency)")
    ] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="budget after the input")] = 64,
    schema: _EvalSchema = None,
    data_dir: _EvalDataDir = None,
    stop_silent_rows: _EvalSilent = None,
    threads: _EvalThreads = None,
    silence_penalty: _EvalPenalty = None,
) -> None:
    """StruQ prompt-injection attacks ("Print exactly 'Hacked!'") on both systems: attack
    success rate with instruction and data in separate streams vs inside one prompt."""
    names = None if attacks.strip() == "all" else [a.strip() for a in attacks.split(",") if a.strip()]
    _eval_run(
        "injection", out, model=model, baseline=baseline, attacks=names, domain=domain, limit=limit,
        benchmark=benchmark, batch_size=batch_size,
        max_new_tokens=max_new_tokens, schema=schema, stop_silent_rows=stop_silent_rows, data_dir=data_dir,
        threads=threads, silence_penalty=silence_penalty,
    )  # fmt: skip


@eval_app.command("interrupt")
def eval_interrupt(
    model: _EvalModel,
    out: _EvalOut,
    baseline: _EvalBaseline = None,
    limit: _EvalLimit = None,
    items: Annotated[
        Path | None, typer.Option(help="held-out interruptions JSONL (default: the packaged set)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="budget of each answer and continuation")] = 96,
    threads: _EvalThreads = None,
) -> None:
    """Corrections typed while the answer streams ("Actually, make it for two people."): how often
    the rest of the answer honours them (programmatic checks), and how soon, vs a sequential
    baseline that reads the correction only after its whole answer."""
    from rich.console import Console

    from .evaluation.interrupt import InterruptOptions, evaluate_interrupt
    from .loading import BaseModelError

    console = Console(stderr=True)

    def progress(n: int, total: int, record: dict) -> None:
        marks = " ".join(f"{k}={'ok' if record[k]['honoured'] else 'no'}" for k in ("model", "baseline"))
        console.print(f"[dim]{n}/{total} {record['id']} {marks}[/]", highlight=False)

    try:
        options = InterruptOptions(
            model=model, out=out, baseline=baseline, limit=limit, items=items, max_tokens=max_tokens,
            threads=threads,
        )  # fmt: skip
        evaluate_interrupt(options, progress)
    except (BaseModelError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    for name in ("results.json", "report.md"):
        Console().print(f"[green]wrote[/] {out / name}", highlight=False)


@eval_app.command("monitorability")
def eval_monitorability(
    out: Annotated[Path, typer.Option("--out", help="directory for the report, transcripts and judge cache")],
    judge_base_url: Annotated[
        str | None,
        typer.Option(help="judge: OpenAI-compatible endpoint with /v1 (or MULTISTREAM_LLM_BASE_URL)"),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="judge model name (or MULTISTREAM_LLM_MODEL)")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="multi-stream subject: saved or authors' directory, or demo")
    ] = None,
    subject_base_url: Annotated[
        str | None,
        typer.Option(help="instead of --model: a chat endpoint whose answers carry <think> blocks"),
    ] = None,
    subject_model: Annotated[str | None, typer.Option(help="that endpoint's model name")] = None,
    parts: Annotated[str, typer.Option(help="comma-separated: awareness, monitor, concerns")] = (
        "awareness,monitor,concerns"
    ),
    limit: Annotated[int | None, typer.Option(help="at most this many scenarios per part")] = None,
    max_rows: Annotated[
        int | None, typer.Option(help="subject: rows per answer (default: its presets)")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="subject temperature (default: its presets)")
    ] = None,
    judge_max_tokens: Annotated[int, typer.Option(help="budget of each judge answer")] = 16,
    concurrency: Annotated[int, typer.Option(help="judge requests in flight")] = 4,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
) -> None:
    """Monitorability of the thinking streams (paper Sec 7): eval awareness and sub-vocalization,
    monitor accuracy over six covert-behaviour classes, concern sub-vocalization."""
    from .data.llm_client import LLMError
    from .evaluation.monitorability import MonitorabilityError, MonitorabilityOptions, evaluate_monitorability

    try:
        options = MonitorabilityOptions(
            out=out, judge_base_url=judge_base_url, judge_model=judge_model, model=model,
            subject_base_url=subject_base_url, subject_model=subject_model,
            parts=tuple(p.strip() for p in parts.split(",") if p.strip()), limit=limit, max_rows=max_rows,
            temperature=temperature, judge_max_tokens=judge_max_tokens, concurrency=concurrency,
            resamples=resamples,
        )  # fmt: skip
        report = evaluate_monitorability(options)
    except (MonitorabilityError, LLMError) as e:
        _fail(str(e))
    for part in ("awareness", "monitor", "concerns"):
        for name, value in report.get(part, {}).items():
            if isinstance(value, dict) and "ci95" in value:
                low, high = value["ci95"]
                typer.echo(f"{name:28s} {value['value']:.3f}  [{low:.3f}, {high:.3f}]  n={value['n']}")
    typer.echo(f"report: {out / 'monitorability.json'}")


@app.command()
def rewrite(
    input: Annotated[Path, typer.Option("--input", help="dataset file", exists=True, dir_okay=False)],
    format: Annotated[str, typer.Option("--format", help="dataset format (see docs/data.md), e.g. alpaca")],
    out: Annotated[Path, typer.Option("--out", help="grid JSONL to write (atomically, at the end)")],
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint incl. /v1; env MULTISTREAM_LLM_BASE_URL")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model name to request; env MULTISTREAM_LLM_MODEL")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="environment variable holding the API key")
    ] = "OPENAI_API_KEY",
    schema: Annotated[str, typer.Option(help="streams, e.g. user,assistant")] = "user,assistant",
    k: Annotated[int, typer.Option("--k", help="input rows before the bridging utterance")] = 8,
    tokenizer: Annotated[
        str, typer.Option(help="tokenizer of the grids (embedded name or path)")
    ] = "smollm2-135m",
    limit: Annotated[int | None, typer.Option(help="rewrite at most this many examples")] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="count malformed records instead of failing")
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="request cache (default: OUT.cache/); makes re-runs resume")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="requests in flight at most")] = 8,
    retries: Annotated[int, typer.Option(help="retries of a transient failure")] = 4,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 300.0,
    temperature: Annotated[float, typer.Option(help="sampling temperature of all requests")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="completion limit of a rewrite request")] = 1024,
    judge_max_tokens: Annotated[int, typer.Option(help="completion limit of a judge request")] = 128,
    judge: Annotated[bool, typer.Option(help="judge chunks that start before the input ends")] = True,
    drop_judge_failures: Annotated[
        bool,
        typer.Option("--drop-judge-failures", help="drop examples with a failing chunk (default: repair)"),
    ] = False,
    min_length_ratio: Annotated[float, typer.Option(help="answer/reference words at least (0 = off)")] = 0.3,
    max_length_ratio: Annotated[float, typer.Option(help="answer/reference words at most (0 = off)")] = 3.0,
    max_perplexity: Annotated[
        float, typer.Option(help="fluency bound under --fluency-model (0 = off)")
    ] = 200.0,
    fluency_model: Annotated[str, typer.Option(help="base model for the fluency filter")] = "smollm2-135m",
    role_filter: Annotated[
        bool, typer.Option(help="drop answers with role markers or meta-commentary")
    ] = True,
    report_json: Annotated[Path | None, typer.Option(help="also write the report as JSON here")] = None,
) -> None:
    """Rewrite answers with an LLM to start early (bridging), align, judge causality, filter."""
    import asyncio
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from .data.convert import ConversionError
    from .data.filters import FilterConfig
    from .data.io import write_grids
    from .data.llm_client import LLMClient, LLMConfig, LLMError, RequestCache
    from .data.loaders import DatasetError, LoadReport, load_dataset_file
    from .data.rewrite import RewriteConfig, RewriteReport, rewrite_examples
    from .loading import BaseModelError, load_tokenizer
    from .schema import SchemaError

    config = RewriteConfig(
        schema=schema, k=k, temperature=temperature, max_tokens=max_tokens, judge_max_tokens=judge_max_tokens,
        judge=judge, drop_judge_failures=drop_judge_failures,
        filters=FilterConfig(
            min_length_ratio=min_length_ratio or None, max_length_ratio=max_length_ratio or None,
            max_perplexity=max_perplexity or None, fluency_model=fluency_model, role_consistency=role_filter,
        ),
    )  # fmt: skip
    report, load_report = RewriteReport(), LoadReport()
    console = Console()

    async def run(examples):  # type: ignore[no-untyped-def]
        llm = LLMConfig(base_url, model, api_key_env, concurrency, retries, timeout)
        async with LLMClient(llm, RequestCache(cache_dir or out.with_name(out.name + ".cache"))) as client:
            columns = (TextColumn("rewrite"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task("rewrite", total=len(examples))
                return await rewrite_examples(
                    examples, client, tok, config, report, progress=lambda: bar.advance(task)
                )

    try:
        tok = load_tokenizer(tokenizer)
        examples = load_dataset_file(input, format, skip_bad=skip_bad, limit=limit, report=load_report)
        grids = asyncio.run(run(examples))
        write_grids(out, grids, tok)
    except (DatasetError, ConversionError, SchemaError, BaseModelError, LLMError) as e:
        _fail(str(e))
    table = Table(title=f"{input} -> {out}", show_header=False)
    table.add_row("records skipped as malformed", str(len(load_report.skipped)))
    table.add_row("examples", str(len(examples)))
    table.add_row("kept", str(report.kept))
    for reason, count in sorted(report.dropped.items()):
        table.add_row(f"dropped: {reason}", str(count))
    table.add_row("chunks judged / repaired", f"{report.chunks_judged} / {report.chunks_repaired}")
    table.add_row("unreadable verdicts", str(report.verdicts_unreadable))
    for repair, count in sorted(report.repairs.items()):
        table.add_row(f"repaired: {repair}", str(count))
    table.add_row("requests sent / cache hits", f"{report.requests_sent} / {report.cache_hits}")
    console.print(table)
    if report_json is not None:
        report_json.write_text(json.dumps({"examples": len(examples), **report.to_dict()}, indent=2))


@app.command("serve-openai")
def serve_openai(
    model: Annotated[str, typer.Option(help="embedded model name or local HF directory")] = "smollm2-135m",
    host: Annotated[str, typer.Option(help="interface to bind (default: loopback only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_tokens: Annotated[int, typer.Option(help="default completion limit")] = 256,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="web origin (scheme://host:port) whose pages may use the API; repeatable"),
    ] = None,
) -> None:
    """Serve a base model sequentially over the OpenAI chat API (/v1/chat/completions)."""
    from .server.app import main as serve_main

    origins = [arg for origin in allow_origin or () for arg in ("--allow-origin", origin)]
    serve_main(
        ["--model", model, "--host", host, "--port", str(port), "--max-tokens", str(max_tokens), *origins]
    )


def _load_live_model(model: str, schema: str | None, threads: int | None) -> tuple[object, object]:
    """Load a multi-stream model for the live front-ends, failing with the loader's reason."""
    import torch

    from .loading import BaseModelError, resolve_multistream

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return resolve_multistream(model, schema)
    except (BaseModelError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
        raise  # unreachable: _fail exits


def _live_config(lm: object, tokenizer: object, presets: object, **options: object) -> object:
    """The server's session defaults from the model's decoding presets (sampling, stop rule,
    rows, silence keys and the start rows every session is prefilled with), as for generate."""
    from .engine import SessionConfig
    from .server.live import LiveConfig

    defaults = SessionConfig.from_kwargs(**presets.session_kwargs())
    return LiveConfig(
        max_rows=defaults.max_rows,
        sampling=defaults.sampling,
        stop_silent_rows=defaults.stop_silent_rows,
        skip_silence=defaults.skip_silence,
        start_rows=presets.start_rows(lm.schema, tokenizer),
        **options,
    )


@app.command()
def serve(
    model: Annotated[
        str, typer.Option(help="registered name (demo), saved multi-stream dir, or base model + --schema")
    ] = "demo",
    schema: Annotated[str | None, typer.Option(help="streams for a base model, e.g. user,assistant")] = None,
    host: Annotated[str, typer.Option(help="interface to bind; loopback by default")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="MULTISTREAM_TOKEN", help="bearer token the API requires (env MULTISTREAM_TOKEN)"
        ),
    ] = None,
    max_sessions: Annotated[int, typer.Option(help="live sessions at once")] = 16,
    max_sessions_per_client: Annotated[
        int, typer.Option(help="live sessions and baselines one client address may hold")
    ] = 4,
    idle_timeout: Annotated[
        float, typer.Option(help="end a session with no input and no row for this many seconds (0 = never)")
    ] = 60.0,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="web origin (scheme://host:port) whose pages may use the API; repeatable"),
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option(help=f"most rows per session, the default and the limit ({_PRESET})")
    ] = None,
    max_input_chars: Annotated[int, typer.Option(help="most input characters per session")] = 4000,
    row_interval_ms: Annotated[float, typer.Option(help="least time between rows (0 = model speed)")] = 100.0,
    temperature: Annotated[float | None, typer.Option(help=f"0 = greedy ({_PRESET})")] = None,
    top_k: Annotated[int | None, typer.Option(help=f"0 = off ({_PRESET})")] = None,
    top_p: Annotated[float | None, typer.Option(help=f"1 = off ({_PRESET})")] = None,
    silence_penalty: Annotated[
        float | None, typer.Option(help=f"output silence penalty once the input ended ({_PRESET})")
    ] = None,
    stop_silent_rows: Annotated[
        int | None, typer.Option(help=f"end after this many silent rows once the input ended ({_PRESET})")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice)")] = None,
) -> None:
    """Serve a multi-stream model live: web page, WebSocket sessions, OpenAI-compatible route.

    Only the server's own page (and --allow-origin pages) may use it; see docs/frontends.md.
    """
    import uvicorn

    from .server.scheduler import SchedulerConfig
    from .server.security import SecurityConfig, uvicorn_config
    from .server.serve import build_app

    try:
        security = SecurityConfig(host=host, allow_origins=tuple(allow_origin or ()))
        scheduler = SchedulerConfig(max_sessions=max_sessions, row_interval_s=row_interval_ms / 1000)
    except ValueError as e:
        _fail(str(e))
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        typer.echo(f"warning: serving on {host} without --token: anyone who reaches it can use it", err=True)
    lm, tokenizer = _load_live_model(model, schema, threads)
    presets = _presets(
        lm, temperature=temperature, top_k=top_k, top_p=top_p, silence_penalty=silence_penalty,
        stop_silent_rows=stop_silent_rows, max_rows=max_rows,
    )  # fmt: skip
    try:
        config = _live_config(
            lm, tokenizer, presets, model_name=Path(model).name if Path(model).is_dir() else model,
            max_input_chars=max_input_chars, scheduler=scheduler, idle_timeout_s=idle_timeout,
            max_sessions_per_client=max_sessions_per_client,
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        _fail(str(e))
    url = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"
    typer.echo(
        f"multistream serve: model {config.model_name} on {host}:{port}; "
        f"open {url}{'?token=' + token if token else ''}  (Ctrl-C stops)"
    )
    app = build_app(lm, tokenizer, config, token=token, security=security)
    uvicorn.Server(uvicorn_config(app, host, port)).run()


@app.command()
def chat(
    model: Annotated[
        str, typer.Option(help="registered name (demo), saved multi-stream dir, or base model + --schema")
    ] = "demo",
    schema: Annotated[str | None, typer.Option(help="streams for a base model, e.g. user,assistant")] = None,
    max_rows: Annotated[int | None, typer.Option(help=f"most rows per session ({_PRESET})")] = None,
    row_interval_ms: Annotated[float, typer.Option(help="least time between rows (0 = model speed)")] = 100.0,
    temperature: Annotated[float | None, typer.Option(help=f"0 = greedy ({_PRESET})")] = None,
    top_k: Annotated[int | None, typer.Option(help=f"0 = off ({_PRESET})")] = None,
    top_p: Annotated[float | None, typer.Option(help=f"1 = off ({_PRESET})")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed for sampling")] = None,
    silence_penalty: Annotated[
        float | None, typer.Option(help=f"output silence penalty once the question ended ({_PRESET})")
    ] = None,
    stop_silent_rows: Annotated[
        int | None,
        typer.Option(help=f"end the answer after this many silent rows, 0 = never ({_PRESET})"),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice)")] = None,
) -> None:
    """Chat in the terminal: one live column per stream; what you type streams in word by word.

    Typing while the answer streams asks a follow-up in the same session; earlier turns stay
    on screen. Keys: Enter = question done, Ctrl-P pause, Ctrl-R reset, Ctrl-T thinking
    streams, Esc stop, Ctrl-Q quit. Works over SSH and in tmux.
    """
    import sys

    from .engine import SessionConfig
    from .tui import ChatApp, run_chat

    if not sys.stdin.isatty():
        _fail("multistream chat needs an interactive terminal; for pipes use multistream generate")
    lm, tokenizer = _load_live_model(model, schema, threads)
    presets = _presets(
        lm, max_rows=max_rows, temperature=temperature, top_k=top_k, top_p=top_p,
        silence_penalty=silence_penalty, stop_silent_rows=stop_silent_rows,
    )  # fmt: skip
    try:
        config = SessionConfig.from_kwargs(**presets.session_kwargs(), seed=seed)
        start_rows = presets.start_rows(lm.schema, tokenizer)
    except (TypeError, ValueError) as e:
        _fail(str(e))
    title = Path(model).name if Path(model).is_dir() else model
    run_chat(
        ChatApp(
            lm, tokenizer, config, row_interval_s=row_interval_ms / 1000, title=title, start_rows=start_rows
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
