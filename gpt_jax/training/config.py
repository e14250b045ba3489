"""A training run's hyper-parameters, checked before the first step (no heavy imports: the command line builds its
flags from these fields)."""

from __future__ import annotations

import dataclasses
import math

from gpt_jax.errors import InputError, check


DEFAULT_SEQ_LEN = 256
DEFAULT_WARMUP_STEPS = 100


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    seq_len: int | None = dataclasses.field(  # None: the model's context, at most DEFAULT_SEQ_LEN
        default=None,
        metadata={"help": f"tokens per window, BOS included (default: the model's context, at most {DEFAULT_SEQ_LEN})"},
    )
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = dataclasses.field(  # None: a tenth of the steps, at most DEFAULT_WARMUP_STEPS
        default=None,
        metadata={"help": f"learning-rate warm-up steps (default: a tenth of --steps, at most {DEFAULT_WARMUP_STEPS})"},
    )
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_windows: int = 64
    checkpoint_every: int = 500
    val_every: int = 20  # every val_every-th block of the token stream is held out
    block_tokens: int = 4096
    seed: int = 0

    def for_model(self, max_seq_len: int) -> TrainConfig:
        """These settings with the defaults left at None filled in: `seq_len` from the model's context (at most
        DEFAULT_SEQ_LEN), `warmup_steps` from `steps` (a tenth, at most DEFAULT_WARMUP_STEPS)."""
        seq_len = min(DEFAULT_SEQ_LEN, max_seq_len) if self.seq_len is None else self.seq_len
        steps = self.steps if isinstance(self.steps, int) else 0
        warmup = min(DEFAULT_WARMUP_STEPS, steps // 10) if self.warmup_steps is None else self.warmup_steps
        return dataclasses.replace(self, seq_len=seq_len, warmup_steps=warmup)

    def validate(self):
        """Every value given; seq_len and warmup_steps may still be None (see `for_model`)."""
        for name in (
            "steps",
            "batch_size",
            "seq_len",
            "eval_every",
            "eval_windows",
            "checkpoint_every",
            "val_every",
            "block_tokens",
        ):
            v = getattr(self, name)
            if v is None and name == "seq_len":
                continue
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
            check(ok, InputError, f"{name} must be an integer >= 1, got {v!r}")
        check(self.seq_len is None or self.seq_len >= 2, InputError, f"seq_len must be >= 2, got {self.seq_len}")
        for name, low, high in (
            ("learning_rate", 0.0, 10.0),
            ("min_lr_ratio", 0.0, 1.0),
            ("weight_decay", 0.0, 10.0),
            ("grad_clip", 0.0, 1e6),
        ):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
            check(ok, InputError, f"{name} must be a finite number in [{low}, {high}], got {v!r}")
        check(self.learning_rate > 0, InputError, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.grad_clip > 0, InputError, f"grad_clip must be > 0, got {self.grad_clip}")
        check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32,
            InputError,
            f"seed must be an integer in [0, 2**32), got {self.seed}",
        )
        check(
            self.val_every >= 2,
            InputError,
            f"val_every must be >= 2 (every val_every-th block is held out; 1 would leave nothing to train on), "
            f"got {self.val_every}",
        )
        check(
            self.warmup_steps is None
            or (isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps < self.steps),
            InputError,
            f"warmup_steps must be an integer in [0, steps={self.steps}), got {self.warmup_steps!r}",
        )
