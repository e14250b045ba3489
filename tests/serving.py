"""Test helpers: a real server on 127.0.0.1 (a free port) in a background thread, and the official clients."""

from __future__ import annotations

import threading

from gpt_jax.serve_run import BackgroundServer


class RunningServer(BackgroundServer):
    """A `BackgroundServer` with the official `openai` clients."""

    def client(self, **options):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **options)


def run_requests(engine, items, timeout: float = 600) -> list[dict]:
    """Submit (prompt ids, settings dict) pairs to `engine` at once; wait for all. Each result: per row tokens,
    logprobs, top alternatives and finish reason, and "error" when the request failed."""
    from gpt_jax.engine import Request
    from gpt_jax.settings import GenerationSettings

    results, requests = [], []
    lock, left, all_done = threading.Lock(), [len(items)], threading.Event()

    def listener(result):
        def on_event(event):
            if event.kind == "tokens":
                result["tokens"][event.row] += event.tokens
                result["logprobs"][event.row] += event.logprobs
                result["top"][event.row] += event.top or []
                return
            if event.kind == "finish":
                result["finish"][event.row] = event.finish
            else:
                result["error"] = event.error
            if "error" in result or all(f is not None for f in result["finish"]):
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        all_done.set()

        return on_event

    for ids, settings in items:
        prep = engine.prepare(ids, GenerationSettings.of(settings))
        result = {name: [[] for _ in range(prep.rows)] for name in ("tokens", "logprobs", "top")}
        result["finish"] = [None] * prep.rows
        results.append(result)
        requests.append(Request(prep, listener(result)))
    for request in requests:
        engine.submit(request)
    assert all_done.wait(timeout), "requests did not finish"
    return results
