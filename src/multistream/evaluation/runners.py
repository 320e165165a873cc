"""The two systems every evaluation compares, run on the same example with the same input clock.

* :class:`MultiStreamRunner` -- the multi-stream model through the live engine
  (:class:`multistream.engine.Session`): the input streams are fed one token per row (the
  paper's lockstep clock, spec §3.1) and the model writes its output stream while reading.
* :class:`SequentialRunner` -- the sequential baseline: the same prompt text in the base
  model's chat template, Hugging Face ``generate`` (greedy) started only once the whole input
  has arrived.

Both return a :class:`TimedOutput`: the output text plus, for every output token, the row it
was produced in, how many input tokens had been read by then, and when it appeared.

Time is a *virtual clock* driven by measured compute: input token ``j`` arrives at
``a_j = j / rate`` (``rate`` in tokens per second), and a row that holds input token ``j``
starts no earlier than ``a_j`` (the model idles while the user is still typing); every step
then takes the wall-clock time it really took. With ``rate=None`` (lockstep) the input arrives
exactly as fast as the model reads it, one token per row, and the baseline receives the last
token at the moment the multi-stream model read it (same arrival schedule for both). This makes
latency measurable without sleeping, and identical arrival schedules for both systems (spec §7
item 13 leaves the paper's definition open; ``docs/evaluation.md`` states ours).

Rows: the multi-stream model's rows are its own. The baseline gets the rows of the
``sequential`` grid layout (``multistream.data.convert``): one input token per row, then one
generated token per row from the row after the input's end token on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data.examples import SequentialExample

__all__ = [
    "MultiStreamRunner",
    "SequentialRunner",
    "TimedOutput",
    "is_visible",
    "prompt_text",
    "strip_bridging",
    "timeline_of",
]


def is_visible(text: str | None) -> bool:
    """A token the reader would notice: decoded text with something besides whitespace."""
    return bool(text and text.strip())


def prompt_text(example: SequentialExample) -> str:
    """The single prompt of the sequential baseline: the input fields joined by a blank line,
    the way ``multistream.data.convert`` joins fields that share one stream."""
    return "\n\n".join(text for _, text in example.input_fields())


@dataclass
class TimedOutput:
    """One system's output for one example, with per-token timing.

    Args:
        text: the answer: the output stream without its end token and without a leading
            bridging utterance (multi-stream), or the baseline's generated text.
        streams: text of every stream (multi-stream) or ``{"output": text}`` (baseline).
        input_tokens: input rows ``E`` (input tokens including each field's end token).
        input_arrivals_s: arrival time of every input row, seconds from the first one.
        token_rows: per output token (end token excluded), the row it was produced in.
        token_reads: per output token, input rows read before it (``min(row, E)``).
        token_times_s: per output token, when it appeared (seconds from the first input).
        token_visible: per output token, whether it has non-whitespace text.
        token_texts: per output token, its decoded text (for telling a bridging utterance
            from the answer).
        end_row, end_s: row and time of the last output token or the end token, whichever is
            later; None without output.
        rows: rows produced (multi-stream) or prompt + generated tokens (baseline).
        stop: why generation stopped.
        timeline: per row, ``{stream: cell text or None}`` (multi-stream only, for plots).
    """

    text: str
    streams: dict[str, str]
    input_tokens: int
    input_arrivals_s: list[float]
    token_rows: list[int] = field(default_factory=list)
    token_reads: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)
    token_visible: list[bool] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)
    end_row: int | None = None
    end_s: float | None = None
    rows: int = 0
    stop: str | None = None
    timeline: list[dict[str, str | None]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TimedOutput:
        return cls(**data)

    @property
    def last_input_s(self) -> float:
        """Arrival of the last input row. A multi-stream model that ends its output (end token)
        before reading all input stops the session early; the unread rows are then assumed to
        keep arriving at the pace observed so far."""
        arrivals = self.input_arrivals_s
        if not arrivals:
            return 0.0
        missing = self.input_tokens - len(arrivals)
        if missing <= 0:
            return arrivals[-1]
        pace = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else 0.0
        return arrivals[-1] + missing * pace

    def first_answer_token(self) -> int | None:
        """Index of the first visible output token after a leading bridging utterance (the
        first visible token when there is none); None without such a token or without
        ``token_texts``."""
        if len(self.token_texts) != len(self.token_rows):
            return None
        full = "".join(self.token_texts)
        answer_at = len(full) - len(strip_bridging(full))
        offset = 0
        for i, text in enumerate(self.token_texts):
            if offset + len(text) > answer_at and self.token_visible[i]:
                return i
            offset += len(text)
        return None

    @property
    def ended_before_input_end(self) -> bool:
        """The output ended (end token) before the whole input was read."""
        return len(self.input_arrivals_s) < self.input_tokens and self.stop == "end_token"


def timeline_of(model: TimedOutput, baseline: TimedOutput, label: str) -> dict[str, Any]:
    """What the timeline picture needs from one example (``report.plot_timeline``): the
    multi-stream rows, and where the baseline's tokens fall in the sequential layout."""
    return {
        "id": label,
        "rows": model.timeline or [],
        "input_end_row": model.input_tokens,
        "baseline_start_row": baseline.input_tokens,
        "baseline_text": baseline.text,
        "baseline_rows": len(baseline.token_rows) + 1,  # its tokens and the end token
    }


def _arrival(row: int, rate: float | None) -> float | None:
    return None if rate is None else row / rate


class MultiStreamRunner:
    """Runs a :class:`~multistream.model.MultiStreamLM` on examples through the live engine.

    Args:
        model: the multi-stream model (eval mode).
        tokenizer: its tokenizer.
        max_new_tokens: rows allowed after the input has ended (same budget as the baseline).
        stop_silent_rows: stop once the output has been silent this many rows after the input
            ended (the engine's rule; 0 = off); None = the model's decoding presets.
        silence_penalty: logit subtracted from the output's silence token once the input has
            ended, ramped in; None = the model's decoding presets.

    Every other decoding setting (temperature, top-k/p, penalty ramp, silence keys, start rows)
    is the model's :class:`~multistream.presets.DecodingPresets`, as in ``generate``, ``chat``
    and ``serve``; a sampled run uses seed 0 so that reruns and resumed runs agree.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int = 64,
        stop_silent_rows: int | None = None,
        silence_penalty: float | None = None,
    ) -> None:
        from ..presets import DecodingPresets

        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.presets = DecodingPresets.load(model).merged(
            stop_silent_rows=stop_silent_rows, silence_penalty=silence_penalty
        )
        self.stop_silent_rows = self.presets.stop_silent_rows
        self.silence_penalty = self.presets.silence_penalty
        schema = model.schema
        if not schema.output_indices:
            raise ValueError(f"the model's schema {schema.names} has no output stream to score")
        self.schema = schema
        self.output_stream = schema.names[schema.output_indices[0]]
        self.eos_id = tokenizer.eos_token_id

    def input_columns(self, example: SequentialExample) -> tuple[dict[str, list[int]], int]:
        """Per input stream, its cells for rows ``0..E-1`` (silence where another stream is
        speaking), laid out exactly as the training converter does; and ``E``."""
        from ..data.convert import convert_example

        # The sequential policy only places the output after the input; its input cells are the
        # layout every policy shares, so training data and evaluation agree token for token.
        stub = example if example.assistant.strip() else _with_stub_answer(example)
        grid = convert_example(stub, "sequential", self.schema, self.tokenizer)
        end = int(grid.meta["input_end_row"])
        columns = {self.schema.names[c]: grid.ids[:end, c].tolist() for c in self.schema.input_indices}
        return columns, end

    def separated(self, example: SequentialExample) -> bool:
        """Whether the example's input fields land in different input streams."""
        columns, _ = self.input_columns(example)
        silence = self.schema.require_silence_id()
        used = [name for name, ids in columns.items() if any(t != silence for t in ids)]
        return len(used) > 1

    def run(self, example: SequentialExample, rate: float | None = None) -> TimedOutput:
        """Decode one example greedily; see the module docstring for the clock.

        Args:
            example: its input fields are fed; its answer is not used.
            rate: input tokens per second, or None for lockstep.

        Returns:
            the :class:`TimedOutput`.
        """
        from ..engine import Session

        columns, end = self.input_columns(example)
        session = Session(self.model, self.tokenizer, self.session_config(end + self.max_new_tokens))
        start_rows = self.presets.start_rows(self.schema, self.tokenizer)
        if start_rows is not None:
            session.prefill(start_rows)  # before the first input arrives: not on the clock
        offset = session.state.num_prefill  # rows below count from the first input row
        self.feed_input(session, columns)
        out = TimedOutput(text="", streams={}, input_tokens=end, input_arrivals_s=[])
        timeline: list[dict[str, str | None]] = []
        clock = 0.0
        ended = False
        with torch.inference_mode():
            while session.stop is None:
                r = len(session.state.rows) - offset
                arrival = _arrival(r, rate) if r < end else None
                if arrival is not None:
                    clock = max(clock, arrival)
                if r < end:
                    out.input_arrivals_s.append(clock)
                start = time.perf_counter()
                row = session.step()
                clock += time.perf_counter() - start
                timeline.append(dict(row.text))
                ended = self.record(out, row, row.index - offset, clock, ended)
        self.finish(out, session, offset)
        out.timeline = timeline
        return out

    def feed_input(self, session: Any, columns: dict[str, list[int]]) -> None:
        """Queue the example's input (:meth:`input_columns`) in a fresh session and close it."""
        for name, ids in columns.items():
            session.feed(name, ids)
        session.close()

    def is_silent(self, token: int, row: Any) -> bool:
        """Whether the output cell of ``row`` (holding ``token``) says nothing."""
        return token == self.schema.require_silence_id()

    def record(self, out: TimedOutput, row: Any, index: int, clock: float, ended: bool) -> bool:
        """Add ``row``'s output cell (at input-relative row ``index``, time ``clock``) to ``out``;
        returns whether the answer has ended (its end token came)."""
        token = row.ids[self.schema.index(self.output_stream)]
        if ended or self.is_silent(token, row):
            return ended
        out.end_row, out.end_s = index, clock
        if token == self.eos_id:
            return True
        text = row.text[self.output_stream]
        out.token_rows.append(index)
        out.token_reads.append(min(index, out.input_tokens))
        out.token_times_s.append(clock)
        out.token_visible.append(is_visible(text))
        out.token_texts.append(text or "")
        return False

    def finish(self, out: TimedOutput, session: Any, offset: int) -> None:
        """Fill ``out``'s texts, rows and stop once ``session`` has stopped."""
        grid = session.grid()
        # The answer is what the model wrote after its start rows (a warm start's header is not).
        out.streams = type(grid)(grid.ids[offset:], grid.schema, grid.meta).stream_texts(self.tokenizer)
        out.text = strip_bridging(self._clean(out.streams[self.output_stream]))
        out.rows = session.state.generated_rows
        out.stop = session.stop

    def session_config(self, max_rows: int) -> Any:
        """The engine settings of one example: the presets, the end token, ``max_rows``."""
        from ..engine import SessionConfig

        end_tokens = {self.output_stream: self.eos_id} if self.eos_id is not None else {}
        options = {**self.presets.session_kwargs(), "max_rows": max_rows}
        seed = 0 if self.presets.temperature > 0 else None
        return SessionConfig.from_kwargs(**options, seed=seed, end_tokens=end_tokens)

    def _clean(self, text: str) -> str:
        eos = getattr(self.tokenizer, "eos_token", None)
        return text.split(eos)[0] if eos else text


# Spellings of bridging utterances in grids converted before data.convert settled on its list.
_EARLIER_BRIDGING: tuple[str, ...] = ("Alright, let me take a look.",)


def _letters(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalpha())


def strip_bridging(text: str) -> str:
    """The answer without a leading bridging utterance of the wait-k data (content-free by
    construction, ``data.convert.BRIDGING_UTTERANCES``), so scoring sees what follows it.

    The first sentence counts as a bridging utterance when its letters equal one (whatever the
    spacing and punctuation), or when it is a close paraphrase (``difflib`` ratio >= 0.75, as a
    small model garbles them: "Allow you to begin while you continue.").
    """
    import difflib

    from ..data.convert import BRIDGING_UTTERANCES

    stripped = text.lstrip()
    utterances = (*BRIDGING_UTTERANCES, *_EARLIER_BRIDGING)
    for utterance in utterances:
        key, seen = _letters(utterance), ""
        for i, ch in enumerate(stripped):
            if ch.isalpha():
                seen += ch.lower()
                if not key.startswith(seen):
                    break
            if seen == key:
                return stripped[i + 1 :].lstrip(".!,;: \n\t")
    end = next((i for i, ch in enumerate(stripped[:100]) if ch in ".!?"), None)
    if end is not None:
        sentence = stripped[: end + 1].lower()
        if any(difflib.SequenceMatcher(None, sentence, u.lower()).ratio() >= 0.75 for u in utterances):
            return stripped[end + 1 :].lstrip(" \n\t")
    return text


def _with_stub_answer(example: SequentialExample) -> SequentialExample:
    from dataclasses import replace

    return replace(example, assistant="-")


class SequentialRunner:
    """Runs a causal LM sequentially: chat-templated prompt, greedy decoding with the shared
    :class:`~multistream.sequential.SequentialBaseline`, every token time-stamped.

    Args:
        model: a Hugging Face causal LM (a PEFT model works too).
        tokenizer: its tokenizer; with a chat template the prompt is one user turn.
        max_new_tokens: generation budget.
    """

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt: one user turn (:func:`multistream.sequential.chat_prompt_ids`)."""
        from ..sequential import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, text)

    def run(
        self,
        example: SequentialExample,
        input_rows: int,
        rate: float | None = None,
        last_input_s: float | None = None,
    ) -> TimedOutput:
        """Generate once the whole input has arrived.

        Args:
            example: its input fields form the prompt (:func:`prompt_text`).
            input_rows: ``E`` of the same example for the multi-stream model (shared schedule).
            rate: input tokens per second, or None (lockstep).
            last_input_s: lockstep only: when the last input token arrived in the multi-stream
                run of this example (default 0: the input is all there at once).

        Returns:
            the :class:`TimedOutput`; rows follow the sequential grid layout.
        """
        arrivals = [a if (a := _arrival(r, rate)) is not None else 0.0 for r in range(input_rows)]
        if rate is None and last_input_s is not None and arrivals:
            arrivals[-1] = last_input_s
        start_s = arrivals[-1] if arrivals else 0.0
        from ..sequential import SequentialBaseline

        prompt = self.prompt_ids(prompt_text(example))
        eos = self.tokenizer.eos_token_id
        baseline = SequentialBaseline(self.model, self.tokenizer, prompt, self.max_new_tokens)
        tokens: list[int] = []
        stamps: list[float] = []
        began = time.perf_counter()
        while (token := baseline.next_token()) is not None or baseline.reason == "eos":
            tokens.append(eos if token is None else token)  # the end token ends the answer
            stamps.append(time.perf_counter())
            if token is None:
                break
        out = TimedOutput(text="", streams={}, input_tokens=input_rows, input_arrivals_s=arrivals)
        kept: list[int] = []
        for k, (token, stamp) in enumerate(zip(tokens, stamps, strict=True)):
            row = input_rows + k
            out.end_row, out.end_s = row, start_s + (stamp - began)
            if token == eos:
                out.stop = "end_token"
                break
            kept.append(token)
            out.token_rows.append(row)
            out.token_reads.append(input_rows)
            out.token_times_s.append(start_s + (stamp - began))
            text = self.tokenizer.decode([token])
            out.token_visible.append(is_visible(text))
            out.token_texts.append(text)
        out.stop = out.stop or "max_new_tokens"
        out.text = self.tokenizer.decode(kept, skip_special_tokens=True)
        out.streams = {"output": out.text}
        out.rows = len(prompt) + len(tokens)
        return out
