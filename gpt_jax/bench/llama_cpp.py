"""llama.cpp as an optional peer of `gpt-jax bench` (`--llama-cpp DIR`; not in CI).

DIR is a llama.cpp source tree (e.g. `vendor/llama.cpp` of the llama-cpp-python source distribution) built with
CMake, so that DIR/convert_hf_to_gguf.py and DIR/build/bin/llama-batched-bench exist. The benchmark's random
transformers checkpoint is converted by llama.cpp's own converter to a GGUF file of the same dtype, and
llama-batched-bench decodes `batch` parallel sequences of `prompt_len` prompt tokens and `new_tokens` new ones on
the run's threads. llama-batched-bench does not sample (it feeds tokens), so the greedy and top-p rows time the same
work for it.

The converter names a vocabulary by hashing what the checkpoint's tokenizer makes of a test text, and only knows
real tokenizers'. The random checkpoints get a stand-in: the bundled SentencePiece model for Llama shapes (the
converter pads the vocabulary to the model's), and for GPT-2 shapes a small byte-level BPE with the converter's
vocabulary check told it is GPT-2's. The tokenizer changes nothing of the decode being timed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from gpt_jax.errors import InputError

CONVERT = r"""
import runpy, sys
root, model, out, outtype = sys.argv[1:5]
sys.path.insert(0, root)
sys.path.insert(1, root + "/gguf-py")
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"  # the stand-in BPE (see the module's text)
sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
runpy.run_path(root + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def prepare_for_converter(directory: Path) -> None:
    """Tokenizer files the converter can read, for a checkpoint that has none (see the module's text), and for
    GPT-2 the context under the older name the converter reads (n_ctx)."""
    config = json.loads((directory / "config.json").read_text())
    if config.get("model_type") == "gpt2":
        (directory / "config.json").write_text(json.dumps({"n_ctx": config["n_positions"], **config}))
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        size = min(300, config["vocab_size"])  # the converter pads a smaller vocabulary, never cuts a larger one
        alphabet = pre_tokenizers.ByteLevel.alphabet() if size >= 300 else []
        trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=alphabet)
        tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 4, trainer)
        tok.save(str(directory / "tokenizer.json"))
        fields = {"tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
        (directory / "tokenizer_config.json").write_text(json.dumps(fields))
    else:
        bundled = Path(__file__).resolve().parents[1] / "assets" / "shakespeare" / "tokenizer.model"
        shutil.copyfile(bundled, directory / "tokenizer.model")


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, directory: Path, dtype: str, threads: int, root: str):
        self.root, self.threads = Path(root), threads
        self.binary = self.root / "build" / "bin" / "llama-batched-bench"
        for path in (self.root / "convert_hf_to_gguf.py", self.binary):
            if not path.is_file():
                raise InputError(f"--llama-cpp {root}: {path} not found (a llama.cpp tree built with CMake)")
        prepare_for_converter(directory)
        self.gguf = directory / "model.gguf"
        outtype = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        argv = [sys.executable, "-c", CONVERT, str(self.root), str(directory), str(self.gguf), outtype]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            raise InputError(f"llama.cpp's converter failed: {done.stderr.strip().splitlines()[-1:]}")

    def run(self, prompts, new_tokens, mode) -> float:
        """Seconds of prefill plus decode of len(prompts) parallel sequences, as llama-batched-bench times them."""
        batch, prompt_len = len(prompts), max(map(len, prompts))
        context = max(512, batch * (prompt_len + new_tokens) + 16)
        argv = [str(self.binary), "-m", str(self.gguf), "-c", str(context), "-t", str(self.threads)]
        # the batch twice: this build prints no row for the first configuration of a run (measured), so the second,
        # warm one is read
        argv += ["-npp", str(prompt_len), "-ntg", str(new_tokens), "-npl", f"{batch},{batch}", "--output-format", "jsonl"]
        done = subprocess.run(argv, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{") and '"speed_tg"' in line]
        if done.returncode or not lines:
            raise RuntimeError(f"llama-batched-bench failed: {done.stderr.strip()[-300:]}")
        result = json.loads(lines[-1])
        return result["t_pp"] + result["t_tg"]
