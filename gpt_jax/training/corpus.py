"""The training text: read (UTF-8, typed errors), tokenized, split into training and held-out streams, and batched
as a pure function of (seed, step)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from gpt_jax.errors import InputError, check
from gpt_jax.text.tokenizer import Tokenizer
from gpt_jax.training.config import TrainConfig


@dataclasses.dataclass
class Corpus:
    """The tokenized text, split into training and held-out streams of ids (no BOS inside)."""

    train: np.ndarray
    val: np.ndarray
    val_chars: int  # characters the held-out windows decode to

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer, tc: TrainConfig) -> Corpus:
        check(tc.seq_len is not None, InputError, "seq_len is not set: TrainConfig.for_model(max_seq_len) fills it in")
        lines = text.splitlines(keepends=True)
        chunks = ["".join(lines[i : i + 256]) for i in range(0, len(lines), 256)]  # splits at newlines: exact
        ids = np.concatenate([np.asarray(tokenizer.encode(c, add_special_tokens=False), np.int32) for c in chunks])
        blocks = [ids[i : i + tc.block_tokens] for i in range(0, len(ids), tc.block_tokens)]
        val_blocks = [b for i, b in enumerate(blocks) if i % tc.val_every == tc.val_every - 1]
        train = np.concatenate([b for i, b in enumerate(blocks) if i % tc.val_every != tc.val_every - 1])
        val = np.concatenate(val_blocks) if val_blocks else ids[-tc.block_tokens :]
        check(
            len(train) > tc.seq_len and len(val) >= tc.seq_len,
            InputError,
            f"the corpus ({len(ids)} tokens) is too small for seq_len={tc.seq_len}",
        )
        corpus = cls(train=train, val=val, val_chars=0)
        corpus.val_chars = sum(len(tokenizer.decode(w[1:])) for w in corpus.val_windows(tokenizer, tc))
        return corpus

    def batch(self, bos: int, tc: TrainConfig, step: int) -> np.ndarray:
        """[batch_size, seq_len] windows for `step`, each BOS + seq_len-1 ids, at offsets drawn from (seed, step)."""
        rng = np.random.default_rng([tc.seed, step])
        starts = rng.integers(0, len(self.train) - tc.seq_len, size=tc.batch_size)
        body = self.train[starts[:, None] + np.arange(tc.seq_len - 1)]
        return np.concatenate([np.full((tc.batch_size, 1), bos, np.int32), body], axis=1)

    def val_windows(self, tokenizer: Tokenizer, tc: TrainConfig) -> np.ndarray:
        """Up to eval_windows non-overlapping held-out windows, evenly spread, BOS first."""
        n = tc.seq_len - 1
        count = min(tc.eval_windows, len(self.val) // n)
        starts = np.linspace(0, len(self.val) - n, count).astype(int)
        body = self.val[starts[:, None] + np.arange(n)]
        return np.concatenate([np.full((count, 1), tokenizer.bos_id, np.int32), body], axis=1)


def read_text(path: Path) -> str:
    """A UTF-8 text file, or an InputError naming it and the first bad byte."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def unigram_baseline(corpus: Corpus, vocab_size: int) -> float:
    """Held-out nats per token of a unigram model fit on the training stream (add-one smoothing)."""
    counts = np.bincount(corpus.train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[corpus.val].mean())
