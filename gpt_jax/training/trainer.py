"""Training with optax: tokenizer + model from text files, held-out evaluation, checkpoints, exact resume.

Batches are a pure function of (seed, step), so a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would, and produces the same parameters. Each window starts with BOS, as a prompt does at
generation time. Several devices: the batch is split on a `data` mesh axis, params replicated.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax.checkpoints import checkpoint, safetensors_io
from gpt_jax.checkpoints.safe_write import as_path, check_target
from gpt_jax.decoding.generator import Generator
from gpt_jax.decoding.scoring import token_logprobs
from gpt_jax.errors import CheckpointError, InputError, check
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.transformer import init_params
from gpt_jax.parallel.sharding import batch_spec, make_mesh, shard_params
from gpt_jax.text.sentencepiece_training import train_tokenizer
from gpt_jax.text.tokenizer import Tokenizer
from gpt_jax.training.config import TrainConfig
from gpt_jax.training.corpus import Corpus, read_text
from gpt_jax.util.json_files import read_json_object

STATE_FILE, OPT_FILE = "train_state.json", "optimizer.safetensors"


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, global-norm clipping; no decay on norms and biases."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.learning_rate, max(tc.warmup_steps, 1), max(tc.steps, 2), end_value=tc.learning_rate * tc.min_lr_ratio
    )
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=tc.weight_decay, mask=decay_mask),
    )


def token_nll(config: ModelConfig, params: dict, tokens: jax.Array) -> jax.Array:
    """[B, T] windows -> [B] summed negative log-likelihood of tokens 1..T-1 given the ones before."""
    return -token_logprobs(config, params, tokens)[0].sum(axis=1)


class Trainer:
    """Holds params and optimizer state; `run` trains to `tc.steps`, checkpointing into `out_dir`."""

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Tokenizer,
        corpus: Corpus,
        tc: TrainConfig,
        out_dir: str | Path | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        """`mesh` ("data", "model"): params by the partition rules of `sharding`, the batch on `data`. Default: all
        devices on `data` (plain data parallelism), or none with one device."""
        tc = tc.for_model(config.max_seq_len)
        tc.validate()
        self.config, self.tokenizer, self.corpus, self.tc = config, tokenizer, corpus, tc
        self.out_dir = Path(out_dir) if out_dir else None
        self.optimizer = make_optimizer(tc)
        self.params = init_params(config, jax.random.key(tc.seed))
        self.opt_state = self.optimizer.init(self.params)
        self.step, self.history = 0, []
        if mesh is None and len(jax.devices()) > 1:
            mesh = make_mesh(data=len(jax.devices()), model=1)
        self.mesh = mesh
        if mesh is not None:
            data = mesh.shape["data"]
            check(
                tc.batch_size % data == 0,
                InputError,
                f"batch_size={tc.batch_size} must divide evenly over the mesh's data axis of size {data}",
            )
            self.params = shard_params(config, self.params, mesh)
            self.opt_state = self.optimizer.init(self.params)
        self._train_step = jax.jit(self._step_fn, donate_argnums=(0, 1))
        self._eval = jax.jit(lambda p, t: token_nll(config, p, t))

    def _step_fn(self, params, opt_state, tokens):
        def loss_fn(p):
            return token_nll(self.config, p, tokens).sum() / (tokens.shape[0] * (tokens.shape[1] - 1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _shard(self, tokens: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(tokens)
        return jax.device_put(tokens, jax.sharding.NamedSharding(self.mesh, batch_spec()))

    def evaluate(self) -> dict:
        """Held-out loss in nats per token and per character."""
        windows = self.corpus.val_windows(self.tokenizer, self.tc)
        nll = float(np.sum(jax.device_get(self._eval(self.params, jnp.asarray(windows)))))
        tokens = windows.shape[0] * (windows.shape[1] - 1)
        return {
            "step": self.step,
            "val_nats_per_token": nll / tokens,
            "val_nats_per_char": nll / max(self.corpus.val_chars, 1),
        }

    def run(self, progress: bool = True, stop_at: int | None = None) -> list[dict]:
        tc, last = self.tc, min(stop_at or self.tc.steps, self.tc.steps)
        start_time, start_step, loss = time.perf_counter(), self.step, float("nan")
        while self.step < last:
            tokens = self._shard(self.corpus.batch(self.tokenizer.bos_id, tc, self.step))
            self.params, self.opt_state, loss_arr = self._train_step(self.params, self.opt_state, tokens)
            self.step += 1
            if progress and (self.step % 10 == 0 or self.step == last):
                loss = float(loss_arr)
                rate = (self.step - start_step) * tc.batch_size * tc.seq_len / (time.perf_counter() - start_time)
                _progress(self.step, tc.steps, f"loss {loss:.3f}  {rate:,.0f} tok/s")
            if self.step % tc.eval_every == 0 or self.step == tc.steps:
                record = {
                    **self.evaluate(),
                    "train_loss": float(loss_arr),
                    "elapsed_s": round(time.perf_counter() - start_time, 1),
                }
                self.history.append(record)
                if progress:
                    print(
                        f"\nstep {self.step}: held-out {record['val_nats_per_token']:.4f} nats/token, "
                        f"{record['val_nats_per_char']:.4f} nats/char",
                        file=sys.stderr,
                    )
            if self.out_dir and (self.step % tc.checkpoint_every == 0 or self.step == tc.steps):
                self.save(self.out_dir)
        return self.history

    def generator(self) -> Generator:
        return Generator(self.config, self.params, self.tokenizer)

    def save(self, directory: Path) -> None:
        """A loadable model directory plus the optimizer state and step, for `resume`."""
        opt_flat = {f"{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(self.opt_state))}
        state = {"step": self.step, "train_config": dataclasses.asdict(self.tc), "history": self.history}
        extra = {STATE_FILE: json.dumps(state, indent=1).encode(), OPT_FILE: safetensors_io.to_bytes(opt_flat)}
        checkpoint.save(self.generator(), directory, extra_files=extra)

    def resume(self, directory: str | Path) -> None:
        """Continue from a checkpoint written by `save` (same configs and corpus)."""
        directory = Path(directory)
        check_resumable(directory)
        loaded = checkpoint.load(directory)
        check(loaded.config == self.config, InputError, f"{directory}: model config differs from this run's")
        state = read_json_object(directory / STATE_FILE)
        check(
            isinstance(state.get("step"), int) and isinstance(state.get("history"), list),
            CheckpointError,
            f"{directory / STATE_FILE}: damaged (needs an integer step and a history list)",
        )
        check(
            state["train_config"] == dataclasses.asdict(self.tc),
            InputError,
            f"{directory}: training config differs from this run's",
        )
        opt = safetensors_io.read(directory / OPT_FILE)
        leaves, treedef = jax.tree_util.tree_flatten(self.opt_state)
        check(len(opt) == len(leaves), InputError, f"{directory}: optimizer state does not match")
        restored = [jnp.array(opt[str(i)]) for i in range(len(leaves))]
        for i, (want, got) in enumerate(zip(leaves, restored)):
            check(
                want.shape == got.shape and want.dtype == got.dtype,
                InputError,
                f"{directory / OPT_FILE}: optimizer leaf {i} is {got.dtype}{list(got.shape)}, "
                f"expected {want.dtype}{list(want.shape)}",
            )
        self.opt_state = jax.tree_util.tree_unflatten(treedef, restored)
        self.params = jax.tree_util.tree_map(jnp.array, loaded.params)
        if self.mesh is not None:
            self.params = shard_params(self.config, self.params, self.mesh)
            self.opt_state = jax.device_put(
                self.opt_state, jax.tree_util.tree_map(lambda x: x.sharding, self.optimizer.init(self.params))
            )
        self.step, self.history = state["step"], state["history"]


def _progress(step: int, total: int, message: str) -> None:
    width = 30
    filled = int(width * step / max(total, 1))
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total}  {message}", end="", file=sys.stderr, flush=True)


def check_resumable(directory: Path) -> None:
    """`directory` must be a training checkpoint: a model directory with the training state beside it."""
    check(directory.is_dir(), InputError, f"{directory}: no checkpoint to resume from (not a directory)")
    for name in (checkpoint.TOKENIZER_FILE, STATE_FILE, OPT_FILE):
        check(
            (directory / name).is_file(),
            CheckpointError,
            f"{directory}: no {name}, so not a training checkpoint to resume (train without --resume)",
        )


def train(
    text_files: Sequence[str | Path],
    out_dir: str | Path,
    config: ModelConfig,
    tc: TrainConfig,
    tokenizer: Tokenizer | None = None,
    resume: bool = False,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> Trainer:
    """Train a tokenizer (unless given) and a model on `text_files`; checkpoints go to `out_dir`. A `tc.seq_len` of
    None takes the model's context (at most 256)."""
    check(
        isinstance(text_files, (list, tuple)) and len(text_files) > 0,
        InputError,
        "text_files must be a non-empty list of paths",
    )
    for f in text_files:
        check(Path(f).is_file(), InputError, f"text file not found: {f}")
    tc = tc.for_model(config.max_seq_len)
    tc.validate()
    check(
        tc.seq_len <= config.max_seq_len,
        InputError,
        f"seq_len={tc.seq_len} is more than the model's context (max_seq_len={config.max_seq_len})",
    )
    out_dir = as_path(out_dir, "out_dir")
    check_target(out_dir, checkpoint.own_files(out_dir))
    text = "".join(read_text(Path(f)) for f in text_files)
    if resume:
        check_resumable(out_dir)
        tokenizer = Tokenizer(out_dir / checkpoint.TOKENIZER_FILE)
    elif tokenizer is None:
        tokenizer = Tokenizer(train_tokenizer(text_files, config.vocab_size))
    check(
        tokenizer.vocab_size == config.vocab_size,
        InputError,
        f"tokenizer vocab_size {tokenizer.vocab_size} != model vocab_size {config.vocab_size}",
    )
    config = config.replace(bos_id=tokenizer.bos_id, eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id, add_bos=True)
    corpus = Corpus.from_text(text, tokenizer, tc)
    trainer = Trainer(config, tokenizer, corpus, tc, out_dir, mesh)
    if resume:
        trainer.resume(out_dir)
    trainer.run(progress=progress)
    return trainer
