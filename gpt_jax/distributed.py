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

from gpt_jax.errors import InputError, check
from gpt_jax.generate import GenerationResult, Generator

FINISH = ["eos", "length", "stop", None]


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Start `jax.distributed`. Arguments default to GPT_JAX_COORDINATOR, GPT_JAX_NUM_PROCESSES and
    GPT_JAX_PROCESS_ID; with none of them set, JAX detects the cluster itself (TPU VM slices, SLURM, ...).
    CPU-only processes use gloo for their collectives."""
    coordinator = coordinator or os.environ.get("GPT_JAX_COORDINATOR")
    if num_processes is None and "GPT_JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["GPT_JAX_NUM_PROCESSES"])
    if process_id is None and "GPT_JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["GPT_JAX_PROCESS_ID"])
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or coordinator and coordinator.startswith(("127.", "localhost")):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def local_mesh():
    """A data-parallel mesh over this host's own devices."""
    from gpt_jax.sharding import make_mesh

    return make_mesh(data=jax.local_device_count(), model=1, devices=jax.local_devices())


def _broadcast_seed(seed: int | None) -> int:
    from jax.experimental import multihost_utils

    if seed is None:
        import secrets

        seed = secrets.randbits(31)
    return int(multihost_utils.broadcast_one_to_all(np.int64(seed)))


def generate(gen: Generator, prompts: Sequence[str], **settings) -> GenerationResult | None:
    """Every host calls this with the same prompts and settings; host 0 gets the whole result, others None."""
    from jax.experimental import multihost_utils

    check(
        isinstance(prompts, (list, tuple)) and len(prompts) > 0,
        InputError,
        "prompts must be a non-empty list of strings",
    )
    check(
        "row_seeds" not in settings and settings.get("n", 1) == 1,
        InputError,
        "distributed.generate sets row_seeds itself and takes n=1",
    )
    rank, hosts = jax.process_index(), jax.process_count()
    seed = _broadcast_seed(settings.pop("seed", None))
    mine = list(range(rank, len(prompts), hosts))
    per_host = -(-len(prompts) // hosts)
    budget = max(np.atleast_1d(settings.get("max_new_tokens", 64)))
    ids = np.full((per_host, budget), -1, np.int32)
    finish = np.full((per_host,), 3, np.int32)
    logprobs = np.zeros((per_host, budget), np.float32)
    if mine:
        out = gen.generate([prompts[i] for i in mine], seed=seed, row_seeds=mine, **settings)
        for j, (toks, lps, reason) in enumerate(zip(out.token_ids, out.logprobs, out.finish_reasons)):
            ids[j, : len(toks)], logprobs[j, : len(toks)], finish[j] = toks, lps, FINISH.index(reason)
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
        reasons.append(FINISH[int(all_finish[h, j])])
        from gpt_jax.tokenizer import IncrementalDecoder

        decoder = IncrementalDecoder(tok, tok.encode(prompts[i]))
        text = decoder.add(token_ids[-1]) + decoder.flush()
        texts.append(text)
    return dataclasses.replace(
        GenerationResult(token_ids=token_ids, finish_reasons=reasons, logprobs=lps, seed=seed, steps=-1), texts=texts
    )
