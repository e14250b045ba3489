"""What a decode needs in memory and what the device has, so a call that cannot fit is refused before it compiles."""

from __future__ import annotations

import jax

from gpt_jax.decoding.programs import cache_length
from gpt_jax.errors import InputError, check
from gpt_jax.model.config import ModelConfig


def available_memory_bytes(mesh=None) -> int | None:
    """Memory a decode may use: free accelerator memory over the mesh's devices, or the host's available memory
    (MemAvailable) on CPU; None when it cannot be told."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        devices = mesh.devices.size if mesh is not None else 1
        return devices * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def decode_bytes(config: ModelConfig, rows: int, prompt_len: int, buffer: int) -> int:
    """An estimate of what one decode allocates besides the weights: the KV cache, the per-row [B, V] state, and
    the prefill's attention scores (fp32, [B, N, T, S]), the largest activation."""
    slots = cache_length(prompt_len, buffer)
    itemsize = jax.numpy.dtype(config.dtype).itemsize
    cache = 2 * config.n_layers * rows * config.n_kv_heads * config.head_dim * slots * itemsize
    state = 6 * rows * config.vocab_size * 4 + 4 * rows * buffer * 4
    scores = rows * config.n_heads * prompt_len * slots * 4
    return cache + state + scores


def check_memory(config: ModelConfig, rows: int, prompt_len: int, buffer: int, mesh=None) -> None:
    """Refuse (InputError) a decode that cannot fit, before it compiles, not by running out halfway through."""
    need, have = decode_bytes(config, rows, prompt_len, buffer), available_memory_bytes(mesh)
    check(
        have is None or need <= have,
        InputError,
        f"this call needs about {need / 2**30:.1f} GiB for its KV cache and activations ({rows} rows x "
        f"{cache_length(prompt_len, buffer)} slots) and {have / 2**30 if have else 0:.1f} GiB are available: "
        "lower max_new_tokens, the prompt length or the number of prompts",
    )


def serving_bytes(config: ModelConfig, slots: int, length: int, chunk: int, prefill_rows: int) -> int:
    """An estimate of what the serving engine allocates besides the weights: the slots' KV cache (`length`
    positions each, no speculative room), their per-slot [B, V] state, one prompt's prefill cache (`prefill_rows`
    rows of up to `length` positions) and a chunk's attention scores (fp32, [R, N, C, length])."""
    itemsize = jax.numpy.dtype(config.dtype).itemsize
    per_position = 2 * config.n_layers * config.n_kv_heads * config.head_dim * itemsize
    caches = (slots + prefill_rows) * length * per_position
    state = 6 * slots * config.vocab_size * 4
    scores = prefill_rows * config.n_heads * min(chunk, length) * length * 4
    return caches + state + scores


def check_serving_memory(
    config: ModelConfig,
    slots: int,
    length: int,
    chunk: int,
    prefill_rows: int,
    mesh=None,
    prefix_cache_bytes=0,
    constraint_bytes=0,
):
    """Refuse (InputError) a server whose slots, prefix-cache budget and constraint table cannot fit, before
    anything compiles."""
    slots_need, have = serving_bytes(config, slots, length, chunk, prefill_rows), available_memory_bytes(mesh)
    need = slots_need + prefix_cache_bytes + constraint_bytes
    cache = f", up to {prefix_cache_bytes / 2**30:.1f} GiB for the prefix cache" if prefix_cache_bytes else ""
    table = f", {constraint_bytes / 2**30:.2f} GiB for the constraint table" if constraint_bytes else ""
    check(
        have is None or need <= have,
        InputError,
        f"{slots} slots of {length} positions need about {slots_need / 2**30:.1f} GiB for their KV cache and "
        f"activations{cache}{table}, and {have / 2**30 if have else 0:.1f} GiB are available: lower --slots or "
        "--max-len" + (" or --prefix-cache-gb" if prefix_cache_bytes else "")
        + (" or --constraint-states" if constraint_bytes else ""),
    )
