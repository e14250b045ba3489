"""Test helpers: a real server on 127.0.0.1 (a free port) in a background thread, and the official clients."""

from __future__ import annotations

from gpt_jax.serving.run import BackgroundServer


class RunningServer(BackgroundServer):
    """A `BackgroundServer` with the official `openai` clients."""

    def client(self, **options):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **options)


def run_requests(engine, items, timeout: float = 600) -> list[dict]:
    """Submit (prompt ids, settings dict) pairs to `engine` at once; wait for all. Each result: per row tokens,
    logprobs, top alternatives and finish reason (the engine's own `Outcome`), the prompt tokens the prefix cache
    held ("cached"), and "error" when the request failed."""
    from gpt_jax.decoding.settings import GenerationSettings
    from gpt_jax.serving.requests import Outcome, Request

    outcomes, requests = [], []
    for ids, settings in items:
        prep = engine.prepare(ids, GenerationSettings.of(settings))
        outcomes.append(Outcome(prep.rows))
        requests.append(Request(prep, outcomes[-1].on_event))
    for request in requests:
        engine.submit(request)
    assert all(outcome.wait(timeout) for outcome in outcomes), "requests did not finish"
    results = []
    for o, request in zip(outcomes, requests):
        results.append({"tokens": o.tokens, "logprobs": o.logprobs, "top": o.top, "finish": o.finish})
        results[-1]["cached"] = request.cached_tokens
        if o.error is not None:
            results[-1]["error"] = o.error
    return results
