"""The optional llama.cpp peer of `gpt-jax bench`: what can be checked without a llama.cpp build (the build and the
timing itself run outside CI; docs/BENCHMARKS.md has their numbers)."""

import json

import pytest
from tokenizers import Tokenizer

from gpt_jax.bench.llama_cpp import LlamaCppEngine, prepare_for_converter
from gpt_jax.errors import InputError


def test_gpt2_and_llama_checkpoints_get_tokenizer_files_the_converter_reads(tmp_path):
    gpt2, llama = tmp_path / "gpt2", tmp_path / "llama"
    gpt2.mkdir(), llama.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024}))
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    prepare_for_converter(gpt2)
    prepare_for_converter(llama)
    tok = Tokenizer.from_file(str(gpt2 / "tokenizer.json"))
    assert 256 < tok.get_vocab_size() <= 50257
    assert tok.decode(tok.encode("héllo, world").ids) == "héllo, world"  # byte-level: any text round-trips
    assert json.loads((gpt2 / "config.json").read_text())["n_ctx"] == 1024
    assert (llama / "tokenizer.model").stat().st_size > 0


def test_a_tree_without_the_converter_or_the_built_binary_is_refused_by_name(tmp_path):
    with pytest.raises(InputError, match=r"--llama-cpp .*convert_hf_to_gguf.py not found"):
        LlamaCppEngine(tmp_path, "float32", 2, str(tmp_path))
