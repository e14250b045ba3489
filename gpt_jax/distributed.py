"""Multi-host generation on JAX's own runtime: `jax.distributed`, each host its share of prompts, results on host 0.

    import gpt_jax, gpt_jax.distributed as dist
    dist.initialize()                      # on a TPU VM slice: JAX reads the slice's environment
    gen = gpt_jax.load(mesh=dist.local_mesh())
    out = dist.generate(gen, prompts, max_new_tokens=64, seed=0)   # a GenerationResult on host 0, None elsewhere

Host h generates prompts h, h + H, h + 2H, ... on its own devices, with the global row index as each row's seed
(fold_in(key(seed), row)), so the gathered output equals a single-process run of the whole batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np

from gpt_jax.decoding.constraints.spec import PARSERS, is_per_row
from gpt_jax.decoding.generator import GenerationResult, Generator
from gpt_jax.decoding.rows import FINISH_CODES, FINISH_NAMES, RUNNING
from gpt_jax.decoding.settings import GenerationSettings, per_row
from gpt_jax.errors import InputError, check
from gpt_jax.parallel.sharding import make_mesh
from gpt_jax.text.detokenize import IncrementalDecoder

ENV_HELP = (
    "--distributed needs a cluster JAX detects by itself (a TPU VM slice, SLURM, ...) or GPT_JAX_COORDINATOR "
    "(host:port), GPT_JAX_NUM_PROCESSES and GPT_JAX_PROCESS_ID"
)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    check(value.strip().isdigit(), InputError, f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Start `jax.distributed`. Arguments default to GPT_JAX_COORDINATOR, GPT_JAX_NUM_PROCESSES and
    GPT_JAX_PROCESS_ID; with none of them set, JAX detects the cluster itself (TPU VM slices, SLURM, ...).
    CPU-only processes use gloo for their collectives."""
    coordinator = coordinator or os.environ.get("GPT_JAX_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _env_int("GPT_JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("GPT_JAX_PROCESS_ID")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or coordinator and coordinator.startswith(("127.", "localhost")):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{ENV_HELP} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def local_mesh():
    """A data-parallel mesh over this host's own devices."""
    return make_mesh(data=jax.local_device_count(), model=1, devices=jax.local_devices())


def _broadcast_seed(seed: int) -> int:
    """Host 0's seed on every host."""
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.uint32(seed)))  # 32 bits, as drawn


def generate(gen: Generator, prompts: Sequence[str], **overrides) -> GenerationResult | None:
    """Every host calls this with the same prompts and settings; host 0 gets the whole result, others None."""
    from jax.experimental import multihost_utils

    settings = GenerationSettings.of(overrides, gen.defaults)
    check(
        isinstance(prompts, (list, tuple)) and len(prompts) > 0,
        InputError,
        "prompts must be a non-empty list of strings",
    )
    check(
        settings.row_seeds is None and settings.n == 1,
        InputError,
        "distributed.generate sets row_seeds itself and takes n=1",
    )
    rank, hosts = jax.process_index(), jax.process_count()
    settings = dataclasses.replace(settings, seed=_broadcast_seed(settings.with_seed().seed))
    mine = list(range(rank, len(prompts), hosts))
    per_host = -(-len(prompts) // hosts)
    budget = max(per_row("max_new_tokens", settings.max_new_tokens, len(prompts), int, 1, gen.config.max_seq_len))
    ids = np.full((per_host, budget), -1, np.int32)
    finish = np.full((per_host,), RUNNING, np.int32)
    logprobs = np.zeros((per_host, budget), np.float32)
    if mine:
        mine_settings = dataclasses.replace(settings, row_seeds=mine, **_rows_of(settings, mine))
        fields = {f.name: getattr(mine_settings, f.name) for f in dataclasses.fields(mine_settings)}  # not asdict:
        out = gen.generate([prompts[i] for i in mine], **fields)  # it would take a speculative proposer apart
        for j, (toks, lps, reason) in enumerate(zip(out.token_ids, out.logprobs, out.finish_reasons)):
            ids[j, : len(toks)], logprobs[j, : len(toks)], finish[j] = toks, lps, FINISH_CODES[reason]
    all_ids = multihost_utils.process_allgather(ids)  # [H, per_host, M]
    all_lps = multihost_utils.process_allgather(logprobs)
    all_finish = multihost_utils.process_allgather(finish)
    if rank != 0:
        return None
    token_ids, lps, reasons, texts = [], [], [], []
    tok = gen.tokenizer
    for i in range(len(prompts)):
        h, j = i % hosts, i // hosts
        row = all_ids[h, j]
        n = int(np.sum(row >= 0))
        token_ids.append(row[:n].tolist())
        lps.append(all_lps[h, j, :n].tolist())
        reasons.append(FINISH_NAMES[int(all_finish[h, j])])
        decoder = IncrementalDecoder(tok, tok.encode(prompts[i]))
        texts.append(decoder.add(token_ids[-1]) + decoder.flush())
    result = GenerationResult(token_ids=token_ids, finish_reasons=reasons, logprobs=lps, seed=settings.seed, steps=-1)
    return dataclasses.replace(result, texts=texts)


def _rows_of(settings: GenerationSettings, rows: list[int]) -> dict:
    """The per-prompt lists among `settings`, cut down to this host's prompts."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata["kind"] is not None and f.name != "row_seeds" and isinstance(value, (list, tuple)):
            out[f.name] = [value[i] for i in rows]
    if isinstance(settings.logit_bias, (list, tuple)):
        out["logit_bias"] = [settings.logit_bias[i] for i in rows]
    for kind in PARSERS:  # regex, choice, json_schema, json_object
        if is_per_row(kind, getattr(settings, kind)):
            out[kind] = [getattr(settings, kind)[i] for i in rows]
    return out
