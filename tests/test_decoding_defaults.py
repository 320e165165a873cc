"""One set of decoding defaults (issue 14 item 6): ``generate``, ``serve`` (its WebSocket sessions
and its OpenAI route) and ``eval`` decode a model with the same settings and start rows, taken
from its saved presets, or from the defaults when it has none.

Each command runs for real from the command line; the test only records the settings every
:class:`~multistream.engine.SessionBatch` is built with and the rows it is prefilled with."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from frontend_helpers import one_torch_thread, save_tiny_bpe_model
from multistream.cli import app
from multistream.data.examples import SequentialExample
from multistream.engine import SessionBatch, SessionConfig
from multistream.presets import DecodingPresets

SAVED = DecodingPresets(
    temperature=0.5, top_k=7, top_p=0.9, silence_penalty=3.0, penalty_ramp_rows=3, stop_silent_rows=6,
    max_rows=40, start="warm", warm_start_rows=[[None, "Hello"], [None, None]], skip_silence=True,
)  # fmt: skip


class _Stop(Exception):
    """Ends a command once its settings were recorded."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def recorded(monkeypatch):
    """Every SessionBatch's config and every prefill, in order."""
    seen: dict[str, list] = {"configs": [], "prefills": []}
    init, prefill = SessionBatch.__init__, SessionBatch.prefill

    def recording_init(self, model, tokenizer, size, config=None, *args, **kwargs):
        seen["configs"].append(config)
        init(self, model, tokenizer, size, config, *args, **kwargs)

    def recording_prefill(self, rows):
        seen["prefills"].append([None if r is None else torch.as_tensor(r).tolist() for r in rows])
        prefill(self, rows)

    monkeypatch.setattr(SessionBatch, "__init__", recording_init)
    monkeypatch.setattr(SessionBatch, "prefill", recording_prefill)
    return seen


def _settings(config: SessionConfig) -> dict:
    s = config.sampling
    return {
        "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
        "silence_penalty": s.silence_penalty, "penalty_ramp_rows": s.penalty_ramp_rows,
        "stop_silent_rows": config.stop_silent_rows, "skip_silence": config.skip_silence,
    }  # fmt: skip


def _prefilled(recorded: dict, since: int) -> list[list[int]] | None:
    """The start rows of the first session prefilled since the ``since``-th prefill, or None."""
    new = recorded["prefills"][since:]
    return new[0][0] if new else None


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("saved", [True, False], ids=["saved-presets", "no-presets"])
def test_generate_serve_and_eval_decode_with_the_same_settings(tmp_path, monkeypatch, recorded, saved):
    from multistream.loading import resolve_multistream

    model_dir = tmp_path / "tiny"
    save_tiny_bpe_model(model_dir)
    if saved:
        SAVED.save(model_dir)
    presets = SAVED if saved else DecodingPresets()
    lm, tokenizer = resolve_multistream(str(model_dir))
    expected = _settings(SessionConfig.from_kwargs(**presets.session_kwargs()))
    start = presets.start_rows(lm.schema, tokenizer)

    # generate (a short run: --max-rows is the one option given)
    result = _invoke(["generate", "--model", str(model_dir), "--input", "user=hi there", "--max-rows", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert _settings(recorded["configs"][-1]) == expected
    assert _prefilled(recorded, 0) == start

    # serve: the command builds the app; its sessions and its OpenAI route are checked live.
    import uvicorn

    import multistream.server.serve as serve_module
    from multistream.server.chat_backend import MultiStreamChatBackend
    from multistream.server.live import LiveService
    from multistream.server.openai_routes import ChatMessage, ChatRequest

    built: dict = {}
    monkeypatch.setattr(serve_module, "build_app", lambda *a, **k: built.update(args=a, kwargs=k) or object())
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    result = _invoke(["serve", "--model", str(model_dir), "--port", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    model, tok, live_config = built["args"]
    assert live_config.max_rows == presets.max_rows
    service = LiveService(model, tok, live_config).start()
    try:
        assert _settings(service.session_config_defaults()) == expected
        request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
        assert _settings(MultiStreamChatBackend(service)._config(request)) == expected

        class Quiet:
            def on_start(self, live): ...
            def on_row(self, live, row): ...
            def on_stop(self, live, reason, error): ...

        live = service.scheduler.open(service.session_config_defaults(), Quiet()).result(timeout=30)
        assert _settings(recorded["configs"][-1]) == expected
        state = live.engine_session.state
        assert state.num_prefill == (len(start) if start else 0)
        assert [list(r) for r in state.rows[: state.num_prefill]] == (start or [])
        live.cancel()
    finally:
        service.shutdown()

    # eval: the command's flags default to the presets; the runner decodes one example.
    import multistream.evaluation.systems as systems_module
    from multistream.evaluation.runners import MultiStreamRunner

    ran: dict = {}

    def load_systems(model_name, baseline, schema, max_new_tokens, stop_silent_rows, silence_penalty):
        runner = MultiStreamRunner(*resolve_multistream(model_name), 3, stop_silent_rows, silence_penalty)
        ran["output"] = runner.run(
            SequentialExample(id="q", source="t", user="What is two plus two?", assistant="")
        )
        raise _Stop

    monkeypatch.setattr(systems_module, "load_systems", load_systems)
    before = len(recorded["prefills"])
    result = _invoke(["eval", "latency", "--model", str(model_dir), "--out", str(tmp_path / "eval")])
    assert isinstance(result.exception, _Stop), result.output + repr(result.exception)
    assert _settings(recorded["configs"][-1]) == expected
    assert _prefilled(recorded, before) == start
    # Start rows are not the answer: rows and timings count from the first input row.
    output = ran["output"]
    assert output.rows == len(output.timeline) and output.input_arrivals_s[0] == 0.0
