"""`gpt-jax bench-serve --workload chat | context` on the bundled model with tiny settings: each writes its JSON
(both sides measured, the chat's replies the same with and without the prefix cache) and refuses bad settings."""

from __future__ import annotations

import json
import re

import pytest

from gpt_jax.cli.main import EXIT_INPUT, main


def test_the_context_workload_measures_a_long_and_a_short_max_len(tmp_path):
    out = tmp_path / "context.json"
    argv = ["bench-serve", "--workload", "context", "--requests", "3", "--slots", "2", "--prompt-tokens", "8,16"]
    argv += ["--new-tokens", "6", "--max-len", "256", "--short-len", "64", "--json", str(out), "--plot", ""]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["sides"]) == ["max_len 256", "max_len 64"]
    for side in report["sides"].values():
        assert side["output_tokens"] == 3 * 6 and side["output_tokens_per_s"] > 0
    ratio = report["sides"]["max_len 256"]["output_tokens_per_s"] / report["sides"]["max_len 64"]["output_tokens_per_s"]
    assert report["throughput_ratio"] == pytest.approx(ratio)


def test_the_chat_workload_gives_the_same_replies_with_and_without_the_prefix_cache(tmp_path):
    out = tmp_path / "chat.json"
    argv = ["bench-serve", "--workload", "chat", "--conversations", "2", "--turns", "2", "--system-tokens", "40"]
    argv += ["--user-tokens", "4,8", "--reply-tokens", "4", "--chunk", "16", "--rate", "50", "--json", str(out)]
    assert main([*argv, "--plot", ""]) == 0
    report = json.loads(out.read_text())
    assert report["same_replies"] is True
    cached = report["sides"]["prefix cache"]
    assert cached["turns"] == 4 and cached["cache_hit_tokens"] >= 32  # later turns find the system prompt's blocks
    assert report["sides"]["no prefix cache"]["cache_hit_tokens"] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--short-len", "16"], "needs prompt \\+ new tokens"),
        (["--prompt-tokens", "9"], "--prompt-tokens takes two integers"),
    ],
)
def test_bad_context_settings_are_refused_before_anything_runs(tmp_path, capsys, extra, message):
    argv = ["bench-serve", "--workload", "context", "--json", str(tmp_path / "c.json"), "--plot", "", *extra]
    assert main(argv) == EXIT_INPUT
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "c.json").exists()
