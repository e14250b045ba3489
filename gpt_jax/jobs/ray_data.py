"""gpt_jax in Ray Data: `Generate`, a callable class for `ray.data.Dataset.map_batches`, one model per actor.

    import ray
    from gpt_jax.jobs.ray_data import Generate

    ds = ray.data.read_json("prompts.jsonl")          # columns: prompt (or messages), seed, max_tokens, ...
    out = ds.map_batches(Generate, fn_constructor_kwargs={"model": "/shared/models/mine"},
                         concurrency=2, batch_size=64, num_cpus=1)
    out.write_json("results/")

Each row is one request: a `prompt` (text) or `messages` (a chat, through the model's template) column and any of
the OpenAI request fields as columns of their own (max_tokens, temperature, top_p, top_k, min_p, stop, seed,
penalties, logit_bias, min_tokens); a missing or null value takes `defaults`, then the server's. Other columns pass
through. New columns: text, finish_reason, token_ids, prompt_tokens, completion_tokens, seed, error (null unless
the row was refused; it then has no text). n > 1 is refused: give each sample a row and a seed of its own.

The actor runs its rows through the server's own handlers (`server.create_app`, in process) on the continuous-
batching engine, so a row's tokens do not depend on its batch-mates: with its seed (its own, or one drawn and
written to `seed`) a row gives what `Generator.generate([prompt], seed=seed, ...)` gives on that row alone,
whichever actor or batch takes it. Ray schedules the actors; nothing here does.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from gpt_jax.errors import InputError, check
from gpt_jax.jobs.batch_file import in_process_client, send
from gpt_jax.serving import openai_api as api

FIELDS = {*api.OUR_NAMES, "prompt", "messages", "stop", "logit_bias", "logprobs", "top_logprobs", "echo"}
MODEL_NAME = "gpt-jax"  # the actor's served name, which every body it sends gives
RESULTS = ("text", "finish_reason", "token_ids", "prompt_tokens", "completion_tokens", "seed", "error")


def plain(value):
    """A Ray/numpy/pandas cell as JSON: numpy scalars and arrays to Python, NaN and None to None."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Generate:
    """Loads the model once (in the actor) and answers batches of rows; see the module's docstring."""

    def __init__(
        self,
        model: str | None = None,
        *,
        defaults: dict | None = None,
        slots: int = 8,
        arithmetic: str = "exact",
        mesh: str | None = None,
        max_len: int | None = None,
    ):
        """model: a model directory (on storage every actor reads), None for the bundled one; defaults: request
        fields for rows that leave them out; mesh: e.g. "data=1,model=4" to shard the model over the actor's
        devices (`--mesh`)."""
        import gpt_jax
        from gpt_jax.parallel.sharding import parse_mesh
        from gpt_jax.serving.server import create_app

        self.defaults = dict(defaults or {})
        unknown = sorted(set(self.defaults) - FIELDS - {"n"})
        check(not unknown, InputError, f"defaults has fields no request takes: {unknown}; allowed: {sorted(FIELDS)}")
        gen = gpt_jax.load(model, mesh=parse_mesh(mesh) if mesh else None).with_arithmetic(arithmetic)
        self.app = create_app(gen, MODEL_NAME, slots=slots, max_queue=4 * slots, max_len=max_len)
        self.loop = asyncio.new_event_loop()
        self.client = in_process_client(self.app)

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """batch: columns (a dict of arrays, Ray's "numpy" format, or a pandas DataFrame) -> the same columns and
        RESULTS."""
        columns = batch.to_dict("list") if hasattr(batch, "to_dict") and hasattr(batch, "columns") else dict(batch)
        check(columns, InputError, "the batch has no columns: each row needs a prompt or messages column")
        count = len(next(iter(columns.values())))
        rows = [{name: plain(values[i]) for name, values in columns.items()} for i in range(count)]
        results = self.loop.run_until_complete(self._rows(rows))
        out = {name: v if isinstance(v, np.ndarray) else _column(list(v)) for name, v in columns.items()}
        for name in RESULTS:
            out[name] = _column([r[name] for r in results])
        return out

    async def _rows(self, rows: list[dict]) -> list[dict]:
        return await asyncio.gather(*(self._row(row) for row in rows))

    async def _row(self, row: dict) -> dict:
        body = {**self.defaults, **{k: v for k, v in row.items() if k in FIELDS and v is not None}}
        empty = dict.fromkeys(RESULTS)
        if (row.get("n") or self.defaults.get("n") or 1) != 1:
            return {**empty, "error": "n must be 1 in a row: give each sample a row and a seed of its own"}
        chat = body.get("messages") is not None
        if chat == (body.get("prompt") is not None):
            return {**empty, "error": "a row needs exactly one of prompt and messages"}
        url = "/v1/chat/completions" if chat else "/v1/completions"
        status, answer, seed = await send(self.client, url, {**body, "model": MODEL_NAME, "return_token_ids": True})
        if status != 200:
            return {**empty, "seed": seed, "error": answer.get("error", {}).get("message", f"status {status}")}
        choice, usage = answer["choices"][0], answer["usage"]
        return {
            "text": choice["message"]["content"] if chat else choice["text"],
            "finish_reason": choice["finish_reason"],
            "token_ids": choice["token_ids"],
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "seed": seed,
            "error": None,
        }

    def __del__(self):
        if hasattr(self, "app"):  # not when __init__ failed before the engine started
            self.app.state.engine.close()


def _column(values: list) -> np.ndarray:
    """A column of Python values as a numpy array: numbers and strings as they are, anything else as objects."""
    if len(values) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values):
        return np.asarray(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
