"""Property: every flag of every command, given arbitrary values, ends in a result or in one line on stderr with
status 2 (bad input) or 1 (the environment); nothing else escapes. The flags are read from the parsers themselves,
so a new flag is covered the day it is added. The long work after the checks (training steps, serving, running a
benchmark) is replaced by a stand-in that records it was reached; everything that checks a value runs as it is."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_jax import Generator
from gpt_jax.bench import invariance as bench_invariance
from gpt_jax.bench import models as bench_models
from gpt_jax.bench import serving as bench_serving
from gpt_jax.bench import speculative as bench_speculative
from gpt_jax.bench import structured as bench_structured
from gpt_jax.checkpoints import checkpoint
from gpt_jax.jobs import batch_file
from gpt_jax.cli.parser import build_parser
from gpt_jax.model.presets import LLAMA_TINY


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`gpt-jax ARGV` in this process, its output in strings (which, like a terminal's stderr, take any text)."""
    from gpt_jax.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()

HOSTILE = [
    "", "0", "1", "2", "-1", "3.5", "nan", "inf", "-inf", "1e999", str(2**31), str(2**64), str(-(2**64)), "abc",
    "data=1", "data=0", "data=2,model=0", "model=x", "a=1=2", "caf\udce9", "\x00", " ", "{tmp}/a_dir", "{tmp}/a_file",
    "/dev/null", "/proc/gpt-jax/x", "{model}", "4,8", "8,4", "0,0", "-1,5", "x,y", "llama-tiny", "greedy", "draft",
    "float32",
]
VALUE = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
EXAMPLES = int(os.environ.get("GPT_JAX_CLI_EXAMPLES", "40"))  # per command; more for a longer hunt
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def flags_of(parser: argparse.ArgumentParser) -> list[tuple[str, bool]]:
    """(flag, takes a value) for every optional argument of `parser` but --help."""
    out = []
    for action in parser._actions:
        names = [o for o in action.option_strings if o.startswith("--")]
        if names and not isinstance(action, argparse._HelpAction):
            out.append((names[0], action.nargs != 0))
    return out


def parsers() -> dict[str, argparse.ArgumentParser]:
    main_parsers = build_parser()[1]
    return {
        **main_parsers,
        "bench": bench_models.parser(),
        "bench --speculative": bench_speculative.parser(),
        "bench --invariance": bench_invariance.parser(),
        "bench --structured": bench_structured.parser(),
        "bench-serve": bench_serving.parser(),
    }


BASE = {  # the command's positionals and enough flags for a quick run; the drawn flags come after and win
    "generate": ["generate", "ROMEO:", "--model", "{model}", "--max-new-tokens", "3"],
    "chat": ["chat", "--model", "{chat_model}", "--max-new-tokens", "3"],
    "score": ["score", "{corpus}", "--model", "{model}"],
    "train": ["train", "{corpus}", "--out", "{tmp}/run", "--preset", "llama-tiny", "--steps", "2", "--batch-size",
              "2", "--seq-len", "32", "--eval-windows", "2"],
    "serve": ["serve", "--model", "{model}", "--port", "0", "--slots", "2"],
    "batch": ["batch", "{batch_input}", "--output", "{tmp}/results.jsonl", "--model", "{model}", "--slots", "2"],
    "bench": ["bench", "--shapes", "llama-tiny", "--out", "{tmp}/bench.json"],
    "bench --speculative": ["bench", "--speculative", "--shapes", "llama-tiny", "--out", "{tmp}/spec.json"],
    "bench --invariance": ["bench", "--invariance", "--shape", "llama-tiny", "--out", "{tmp}/invariance.json"],
    "bench --structured": ["bench", "--structured", "--output", "{tmp}/structured.json"],
    "bench-serve": ["bench-serve", "--model", "{model}", "--json", "{tmp}/serve.json", "--plot", ""],
}
PARSERS = parsers()
assert set(PARSERS) == set(BASE), sorted(set(PARSERS) ^ set(BASE))  # every command has a base here


@pytest.fixture(scope="module")
def places(small_tokenizer, tmp_path_factory, corpus_slice):
    from gpt_jax.text.chat import ChatTemplate

    root = tmp_path_factory.mktemp("cli_property")
    g = Generator.from_config(LLAMA_TINY.replace(vocab_size=320, pad_id=3), small_tokenizer, jax.random.key(4))
    model = checkpoint.save(g, root / "model")
    g.tokenizer.chat_template = ChatTemplate("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    chat_model = checkpoint.save(g, root / "chat_model")
    small = root / "small.txt"
    small.write_text(corpus_slice.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    batch_input = root / "batch.jsonl"
    request = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "model", "prompt": "x"}}
    batch_input.write_text(json.dumps(request) + "\n")
    return {"model": str(model), "chat_model": str(chat_model), "corpus": str(small), "batch_input": str(batch_input)}


def install_stand_ins(monkeypatch) -> list[str]:
    """The long work each command starts once its values are checked, replaced; the list names what ran."""
    reached = []

    def mark(name, value=None):
        def stand_in(*args, **kwargs):
            reached.append(name)
            return value

        return stand_in

    import uvicorn

    from gpt_jax.training.trainer import Trainer

    async def no_serving(self, sockets=None):
        reached.append("serve")
        self.config.app.state.engine.close()
        for s in sockets or []:
            s.close()

    monkeypatch.setattr(Trainer, "run", mark("train"))
    monkeypatch.setattr(Trainer, "evaluate", mark("evaluate", {}))
    monkeypatch.setattr(uvicorn.Server, "serve", no_serving)
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)  # its handlers would keep capsys's
    monkeypatch.setattr(bench_models, "bench", mark("bench", {"rows": []}))
    for part in ("ceiling", "lookup", "draft"):
        monkeypatch.setattr(bench_speculative, part, mark(part, {}))
    monkeypatch.setattr(bench_serving, "run", mark("bench-serve", 0))

    async def no_lines(*args, **kwargs):
        reached.append("batch")

    monkeypatch.setattr(batch_file, "run_lines", no_lines)
    monkeypatch.setattr(bench_invariance, "measure", mark("bench --invariance", {"batch": 1, "arithmetic": "exact"}))
    monkeypatch.setattr(bench_invariance, "identity", mark("identity", {}))
    monkeypatch.setattr(bench_structured, "run", mark("bench --structured", {}))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # chat: the conversation ends at once
    return reached


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(BASE))
def test_every_flag_with_any_value_ends_in_a_result_or_one_line(command, places, tmp_path_factory):
    flags = flags_of(PARSERS[command])
    assert flags, command

    @PROPERTY
    @given(drawn=st.lists(st.tuples(st.sampled_from(flags), VALUE), min_size=1, max_size=3))
    def check(drawn):
        tmp = tmp_path_factory.mktemp("run")
        (tmp / "a_dir").mkdir()
        (tmp / "a_file").write_text("mine")
        names = {**places, "tmp": str(tmp)}
        argv = [a.format(**names) for a in BASE[command]]
        for (flag, takes_value), value in drawn:
            argv += [f"{flag}={value.replace('{tmp}', str(tmp)).replace('{model}', places['model'])}"] if (
                takes_value
            ) else [flag]
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp)  # a relative path drawn as a value lands in the example's own directory
            reached = install_stand_ins(patch)
            code, _, err = run_cli(argv)
        assert code in (0, 1, 2), (argv, code, err)
        if code:
            assert err.startswith("gpt-jax: error: ") and err.count("\n") == 1, (argv, err)
            assert "Traceback" not in err, (argv, err)
        assert (tmp / "a_file").read_text() == "mine"
        assert code != 0 or command in ("generate", "chat", "score") or reached, argv  # the work was reached

    check()
