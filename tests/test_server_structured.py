"""Constrained output through `gpt-jax serve` with the real `openai` client: response_format (json_schema, with
`chat.completions.parse` and a pydantic model, and json_object), vLLM's structured_outputs and guided_* extensions,
streamed and not; a bad schema is a 400; concurrent requests with different schemas each equal `generate` alone."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest


class Line(pydantic.BaseModel):
    speaker: str = pydantic.Field(max_length=12)
    act: int = pydantic.Field(ge=1, le=5)  # minimum and maximum in the schema
    words: list[str] = pydantic.Field(max_length=2)


def test_chat_parse_with_a_pydantic_model_and_json_object_streamed(server):
    client = server.client()
    messages = [{"role": "user", "content": "Give a line as JSON."}]
    parsed = client.chat.completions.parse(
        model="shakespeare", messages=messages, response_format=Line, max_tokens=120, seed=1
    )
    choice = parsed.choices[0]
    if choice.finish_reason == "stop":  # "length" would cut the JSON; the tiny model may ramble inside a string
        assert isinstance(choice.message.parsed, Line)
    stream = client.chat.completions.create(
        model="shakespeare", messages=messages, response_format={"type": "json_object"}, max_tokens=120, seed=2,
        stream=True,
    )  # fmt: skip
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    if finish == "stop":
        assert isinstance(json.loads("".join(pieces)), dict)


def test_vllm_extensions_choice_and_regex(server):
    client = server.client()
    for seed in range(4):
        out = client.completions.create(
            model="shakespeare", prompt="Who?", max_tokens=8, seed=seed,
            extra_body={"structured_outputs": {"choice": ["Romeo", "Juliet", "Nurse"]}},
        )  # fmt: skip
        assert out.choices[0].text in ("Romeo", "Juliet", "Nurse")
        dated = client.completions.create(
            model="shakespeare", prompt="Date:", max_tokens=16, seed=seed, extra_body={"guided_regex": r"\d{2}/\d{2}"}
        )
        assert re.fullmatch(r"[0-9]{2}/[0-9]{2}", dated.choices[0].text)
        assert dated.choices[0].finish_reason == "stop"


def test_an_unsupported_schema_is_a_400_naming_the_keyword(server):
    client = server.client()
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}
    with pytest.raises(openai.BadRequestError, match="multipleOf"):
        client.chat.completions.create(
            model="shakespeare", messages=[{"role": "user", "content": "n?"}], max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="one constraint"):
        client.completions.create(
            model="shakespeare", prompt="x", max_tokens=4,
            extra_body={"guided_regex": "a+", "response_format": {"type": "json_object"}},
        )  # fmt: skip


def test_concurrent_requests_with_different_schemas_each_equal_generate_alone(server, served_gen):
    schemas = [
        {"type": "object",
         "properties": {f"k{i}": {"type": "integer"}, "name": {"type": "string", "maxLength": 2 + i % 5},
                        "ok": {"enum": [True, False, i]}},
         "required": [f"k{i}", "name", "ok"]}
        for i in range(32)
    ]  # fmt: skip
    client = server.client()

    def ask(i):
        return client.completions.create(
            model="shakespeare", prompt=f"Record {i}:", max_tokens=48, seed=100 + i, temperature=1.0,
            extra_body={"response_format": {"type": "json_schema",
                                            "json_schema": {"name": f"r{i}", "schema": schemas[i]}}},
        )  # fmt: skip

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(ask, range(32)))
    for i, reply in enumerate(replies):
        alone = served_gen.generate(
            f"Record {i}:", max_new_tokens=48, seed=100 + i, temperature=1.0, top_p=1.0, json_schema=schemas[i]
        )
        assert reply.choices[0].text == alone.texts[0], i
        if reply.choices[0].finish_reason == "stop":
            jsonschema.validate(json.loads(reply.choices[0].text), schemas[i])


def test_the_pool_places_shares_evicts_and_refuses(served_gen):
    """Automata share a placement while used, unused ones make room, a full pool says "not now" (the request
    waits), and one larger than the pool is refused."""
    from gpt_jax.decoding.constraints.automaton import compile_automaton
    from gpt_jax.errors import ConstraintError
    from gpt_jax.serving.constraint_pool import ConstraintPool, empty_table

    tok, eos, v = served_gen.tokenizer, served_gen.config.eos_ids, served_gen.config.vocab_size
    small = [compile_automaton(f"(yes|no){{1,{n}}}", tok, eos) for n in (2, 3, 4)]
    big, middle, least = small[2], small[1], small[0]
    pool = ConstraintPool(v, states=big.states + middle.states)
    table = empty_table(v, pool.capacity)
    first, table = pool.acquire(big, table, uses=2)
    again, table = pool.acquire(big, table)
    assert first == again == 0  # shared
    second, table = pool.acquire(middle, table)
    assert second == big.states
    assert pool.acquire(least, table) == (None, None)  # both in use: it waits
    for _ in range(3):
        pool.release(first)
    third, table = pool.acquire(least, table)  # the unused first one made room
    assert third == 0
    assert (table.accepting[third : third + least.states] == least.accepting).all()
    with pytest.raises(ConstraintError, match="constraint-states"):
        pool.check_fits(compile_automaton("[a-z]{40}", tok, eos))


def test_a_constraint_compiles_while_the_server_goes_on_serving(server, monkeypatch):
    """A request's automaton is compiled off the event loop: while the compile is held, /health still answers."""
    import threading

    import httpx

    from gpt_jax.decoding import generator  # Engine.prepare compiles through generator.automata_of

    entered, release = threading.Event(), threading.Event()
    real = generator.compile_automaton

    def held(*args, **kwargs):
        entered.set()
        release.wait(timeout=60)  # until /health has answered (a blocked event loop never lets it)
        return real(*args, **kwargs)

    monkeypatch.setattr(generator, "compile_automaton", held)
    client = server.client()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.completions.create, model="shakespeare", prompt="Date:", max_tokens=16, seed=4,
            extra_body={"guided_regex": r"\d{2}/\d{2}"},
        )  # fmt: skip
        assert entered.wait(timeout=60)
        try:
            health = httpx.get(server.url + "/health", timeout=20)
        finally:
            release.set()
        assert health.status_code == 200 and not pending.done()
        out = pending.result(timeout=120)
    assert re.fullmatch(r"[0-9]{2}/[0-9]{2}", out.choices[0].text)
