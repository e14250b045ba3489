"""The server's Prometheus metrics (`prometheus_client`, one registry per server): requests, tokens, queue depth,
slot occupancy, slot joins and leaves, time to first token and time per output token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gpt_jax.serving.engine import Observer

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics(Observer):
    def __init__(self, slots: int):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "gpt_jax_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("gpt_jax_prompt_tokens", "prompt tokens of accepted requests", registry=r)
        self.generated_tokens = Counter("gpt_jax_generation_tokens", "tokens generated", registry=r)
        self.queue_depth = Gauge("gpt_jax_queue_depth", "requests waiting for a slot", registry=r)
        self.slots_busy = Gauge("gpt_jax_slots_busy", "slots holding a sequence", registry=r)
        Gauge("gpt_jax_slots", "decode slots", registry=r).set(slots)
        self.occupancy = Histogram(
            "gpt_jax_slot_occupancy", "busy slots at each dispatch", registry=r, buckets=tuple(range(1, slots + 1))
        )
        self.joins = Counter("gpt_jax_slot_joins", "sequences placed in a slot", ["while_others_decode"], registry=r)
        self.leaves = Counter("gpt_jax_slot_leaves", "sequences that left their slot", ["why"], registry=r)
        self.dispatches = Counter("gpt_jax_decode_dispatches", "decode dispatches", registry=r)
        self.ttft = Histogram(
            "gpt_jax_time_to_first_token_seconds", "arrival to first token", registry=r, buckets=LATENCY_BUCKETS
        )
        self.tpot = Histogram(
            "gpt_jax_time_per_output_token_seconds",
            "per token after the first, per sequence",
            registry=r,
            buckets=TOKEN_BUCKETS,
        )

    def watch(self, engine) -> None:
        """Read queue depth and busy slots from `engine` whenever the metrics are scraped."""
        self.queue_depth.set_function(lambda: engine.queued)
        self.slots_busy.set_function(lambda: engine.busy)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # engine hooks (engine thread)
    def on_dispatch(self, busy: int, queued: int) -> None:
        self.dispatches.inc()
        self.occupancy.observe(busy)

    def on_insert(self, joined_running: bool) -> None:
        self.joins.labels(while_others_decode=str(joined_running).lower()).inc()

    def on_release(self) -> None:
        self.leaves.labels(why="cancelled").inc()

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def on_row_finished(self, tokens: int, seconds_after_first: float) -> None:
        self.leaves.labels(why="finished").inc()
        self.generated_tokens.inc(tokens)
        if tokens > 1:
            self.tpot.observe(seconds_after_first / (tokens - 1))
