"""The server's Prometheus metrics (`prometheus_client`, one registry per server): requests, tokens, queue depth,
slot occupancy, slot joins and leaves, the prefix cache (prompt tokens looked up and found, hit rate, blocks and
bytes held, evictions), time to first token and time per output token."""

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
        self.prefix_queries = Counter(
            "gpt_jax_prefix_cache_queries", "prompt tokens looked up in the prefix cache", registry=r
        )
        self.prefix_hits = Counter(
            "gpt_jax_prefix_cache_hits", "prompt tokens whose keys and values the prefix cache held", registry=r
        )
        self.prefix_rate = Gauge("gpt_jax_prefix_cache_hit_rate", "hits / queries so far (tokens)", registry=r)
        self.prefix_blocks = Gauge("gpt_jax_prefix_cache_blocks", "blocks the prefix cache holds", registry=r)
        self.prefix_bytes = Gauge("gpt_jax_prefix_cache_bytes", "bytes those blocks take", registry=r)
        self.prefix_budget = Gauge("gpt_jax_prefix_cache_budget_bytes", "the most they may take", registry=r)
        self.prefix_evicted = Gauge("gpt_jax_prefix_cache_evicted_blocks", "blocks evicted so far", registry=r)
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
        cache = engine.prefix_cache
        self.prefix_rate.set_function(lambda: cache.hit_tokens / cache.queried_tokens if cache.queried_tokens else 0)
        self.prefix_blocks.set_function(lambda: len(cache.blocks))
        self.prefix_bytes.set_function(lambda: cache.used_bytes)
        self.prefix_budget.set(cache.capacity * cache.bytes_per_block)
        self.prefix_evicted.set_function(lambda: cache.evicted)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # engine hooks (engine thread)
    def on_dispatch(self, busy: int, queued: int) -> None:
        self.dispatches.inc()
        self.occupancy.observe(busy)

    def on_prefix_lookup(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prefix_queries.inc(prompt_tokens)
        self.prefix_hits.inc(cached_tokens)

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
