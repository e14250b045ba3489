"""`gpt-jax serve` through the official `openai` client and `httpx`, on a real server on 127.0.0.1: the API returns
what `generate` / `chat` return, 64 concurrent requests each give their tokens alone, and /metrics shows slots
filling and emptying."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time

import httpx
import numpy as np
import pytest

from gpt_jax import IncrementalDecoder
from tests.conftest import CHAT_TEMPLATE

CORPUS_TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. "
CONVERSATION = [{"role": "system", "content": "Speak as a king."}, {"role": "user", "content": "Who goes there?"}]


@pytest.fixture(scope="module")
def gen(served_gen):
    return served_gen


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["shakespeare"]
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_completions_return_what_generate_returns(server, gen):
    client = server.client()
    settings = {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 11, "n": 2, "stop": ["\n\n"]}
    prompts = ["ROMEO:", "Now is the winter of our discontent"]
    want = gen.generate(prompts, top_logprobs=2, **settings)
    got = client.completions.create(
        model="shakespeare", prompt=prompts, max_tokens=24, temperature=0.9, top_p=0.9, seed=11, n=2, stop=["\n\n"],
        logprobs=2, extra_body={"return_token_ids": True},
    )  # fmt: skip
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert [c.text for c in got.choices] == want.texts
    assert [c.model_extra["token_ids"] for c in got.choices] == want.token_ids
    assert [c.finish_reason for c in got.choices] == [
        "stop" if f in ("eos", "stop") else f for f in want.finish_reasons
    ]
    for choice, logprobs, top in zip(got.choices, want.logprobs, want.top_logprobs):
        np.testing.assert_allclose(choice.logprobs.token_logprobs, logprobs, atol=1e-4)
        assert [list(d) for d in choice.logprobs.top_logprobs] == [
            [gen.tokenizer.token_bytes(i).decode("utf-8", "replace") for i, _ in alts] for alts in top
        ]
        assert "".join(choice.logprobs.tokens) == choice.text or choice.finish_reason == "stop"
    assert got.usage.prompt_tokens == sum(len(gen.tokenizer.encode(p)) for p in prompts)
    assert got.usage.completion_tokens == sum(len(ids) for ids in want.token_ids)

    stream = client.completions.create(
        model="shakespeare", prompt=prompts, max_tokens=24, temperature=0.9, top_p=0.9, seed=11, n=2, stop=["\n\n"],
        stream=True, stream_options={"include_usage": True}, extra_body={"return_token_ids": True},
    )  # fmt: skip
    texts, finishes, usage, streamed_ids = ["", "", "", ""], [None] * 4, None, [[], [], [], []]
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.text
            finishes[c.index] = c.finish_reason or finishes[c.index]
            streamed_ids[c.index] += c.model_extra["token_ids"]  # each chunk: the ids it adds
    assert texts == want.texts and finishes == [c.finish_reason for c in got.choices]
    for streamed, ids, finish in zip(streamed_ids, want.token_ids, finishes):  # a stop string may cut what was sent
        assert streamed == ids if finish == "length" else streamed[: len(ids)] == ids
    assert usage.completion_tokens == got.usage.completion_tokens

    echoed = client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=5, seed=2, echo=True)
    plain = gen.generate("ROMEO:", max_new_tokens=5, seed=2, temperature=1.0, top_p=1.0)
    assert echoed.choices[0].text == "ROMEO:" + plain.texts[0]


def test_chat_completions_return_what_chat_returns(server, gen):
    client = server.client()
    want = gen.chat(CONVERSATION, max_new_tokens=30, temperature=0.7, top_p=1.0, seed=5, n=2, top_logprobs=3)
    got = client.chat.completions.create(
        model="shakespeare", messages=CONVERSATION, max_completion_tokens=30, temperature=0.7, seed=5, n=2,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    assert [c.message.content for c in got.choices] == want.texts
    assert all(c.message.role == "assistant" for c in got.choices)
    for choice, ids, logprobs in zip(got.choices, want.token_ids, want.logprobs):
        content = choice.logprobs.content
        assert [bytes(e.bytes) for e in content] == [gen.tokenizer.token_bytes(i) for i in ids]
        np.testing.assert_allclose([e.logprob for e in content], logprobs, atol=1e-4)
        assert all(len(e.top_logprobs) == 3 for e in content)
    stream = client.chat.completions.create(
        model="shakespeare", messages=CONVERSATION, max_tokens=30, temperature=0.7, seed=5, n=2, stream=True
    )
    texts, roles, finishes = ["", ""], set(), [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            roles.add(c.delta.role)
            finishes[c.index] = c.finish_reason or finishes[c.index]
    assert texts == want.texts and "assistant" in roles
    assert finishes == [c.finish_reason for c in got.choices]


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_64_concurrent_requests_each_give_their_tokens_alone(server, gen):
    rng = random.Random(4)
    words = "the king doth wake tonight and all his court is merry with wine and song".split()
    bodies = []
    for i in range(64):
        body = {
            "model": "shakespeare",
            "prompt": " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))),
            "max_tokens": rng.randint(1, 64),
            "temperature": rng.choice([0.0, 0.8, 1.2]),
            "top_p": rng.choice([1.0, 0.9]),
            "seed": rng.randrange(2**31),
            "n": rng.choice([1, 1, 2]),
            "logprobs": 0,
            "return_token_ids": True,
        }
        if i % 5 == 0:
            body.update(presence_penalty=0.4, frequency_penalty=0.2)
        bodies.append(body)
    samples, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            text = httpx.get(server.url + "/metrics").text
            samples.append(
                (
                    _metric(text, "gpt_jax_slots_busy"),
                    _metric(text, "gpt_jax_slot_joins_total", '{while_others_decode="true"}'),
                    _metric(text, "gpt_jax_slot_leaves_total", '{why="finished"}'),
                )
            )
            time.sleep(0.05)

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            responses = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        return [r.json() for r in responses]

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        together = asyncio.run(send_all())
    finally:
        stop.set()
        watcher.join()
    assert all("choices" in r for r in together), [r for r in together if "choices" not in r][:1]
    assert len({r["id"] for r in together}) == 64
    for body, response in zip(bodies, together):
        assert len(response["choices"]) == body["n"]
    for k in range(0, 64, 8):  # alone: exactly the same tokens and log-probabilities
        alone = httpx.post(server.url + "/v1/completions", json=bodies[k], timeout=120).json()
        for a, b in zip(alone["choices"], together[k]["choices"]):
            assert (
                a["token_ids"] == b["token_ids"] and a["logprobs"]["token_logprobs"] == b["logprobs"]["token_logprobs"]
            )
    for k in range(1, 64, 16):  # and what generate gives
        body = bodies[k]
        want = gen.generate(
            body["prompt"], max_new_tokens=body["max_tokens"], temperature=body["temperature"], top_p=body["top_p"],
            seed=body["seed"], n=body["n"], presence_penalty=body.get("presence_penalty", 0.0),
            frequency_penalty=body.get("frequency_penalty", 0.0),
        )  # fmt: skip
        assert [c["token_ids"] for c in together[k]["choices"]] == want.token_ids
    # mid-run, slots were filled while others decoded, and freed while others still ran
    assert any(busy >= 2 for busy, _, _ in samples)
    assert any(joins > 0 and busy > 0 for busy, joins, _ in samples)
    assert any(leaves > 0 and busy > 0 for busy, _, leaves in samples)
    final = httpx.get(server.url + "/metrics").text
    assert _metric(final, "gpt_jax_time_to_first_token_seconds_count") >= 64
    assert _metric(final, "gpt_jax_queue_depth") >= 0


def test_echo_with_logprobs_scores_the_prompt_as_score_ids_does(server, gen):
    """What evaluation harnesses (lm-eval's local-completions) send: echo, logprobs, max_tokens 0 or 1."""
    text = "Now is the winter of our discontent made glorious summer by this sun of York"
    ids = gen.tokenizer.encode(text)
    want = gen.score_ids([ids]).log_likelihood[0]
    client = server.client()
    only = client.completions.create(model="shakespeare", prompt=text, max_tokens=0, echo=True, logprobs=2)
    choice = only.choices[0]
    assert choice.text == gen.tokenizer.decode(ids) and only.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    assert sum(lp.token_logprobs[1:]) == pytest.approx(want, abs=1e-3)
    assert all(len(d) == 2 for d in lp.top_logprobs[1:]) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == choice.text
    for alternatives, actual in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]):
        assert max(alternatives.values()) >= actual - 1e-6
    one = client.completions.create(
        model="shakespeare", prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0, seed=0
    )
    lp1 = one.choices[0].logprobs
    assert len(lp1.token_logprobs) == len(ids) + 1 and lp1.token_logprobs[:-1] == lp.token_logprobs
    greedy = gen.generate(text, max_new_tokens=1, temperature=0.0)
    assert one.choices[0].text == gen.tokenizer.decode(ids) + greedy.texts[0]
    assert lp1.token_logprobs[-1] == pytest.approx(greedy.logprobs[0][0], abs=1e-4)


def test_a_prompt_of_the_full_context_is_scored_and_one_more_token_is_refused_in_the_clients_terms(server, gen):
    """echo with max_tokens 0 generates nothing, so a prompt may fill the server's context (as `score_ids` takes
    it); the refusals name what the client sent."""
    context = server.app.state.engine.max_len
    ids = gen.tokenizer.encode(CORPUS_TEXT * 40)[:context]
    assert len(ids) == context
    body = {"model": "shakespeare", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}
    reply = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    lp = reply.json()["choices"][0]["logprobs"]
    want = gen.score_ids([ids]).token_logprobs[0]
    assert len(lp["token_logprobs"]) == context and lp["token_logprobs"][0] is None
    np.testing.assert_allclose(lp["token_logprobs"][1:], want, atol=1e-4)
    usage = {"prompt_tokens": context, "completion_tokens": 0, "total_tokens": context}
    assert reply.json()["usage"] == {**usage, "prompt_tokens_details": {"cached_tokens": 0}}  # scored: no cache
    longer = httpx.post(server.url + "/v1/completions", json={**body, "prompt": ids + ids[:1]}, timeout=60)
    message = longer.json()["error"]["message"]
    assert longer.status_code == 400 and f"{context + 1} tokens" in message and f"context of {context}" in message
    assert "max_tokens" not in message
    one = httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 1}, timeout=60)
    message = one.json()["error"]["message"]
    assert one.status_code == 400 and f"max_tokens=1 that is {context + 1}" in message
    low = httpx.post(server.url + "/v1/completions", json={**body, "min_tokens": 3}, timeout=60)
    assert low.status_code == 400 and "min_tokens=3 is more than max_tokens=0" in low.json()["error"]["message"]
    plain = {"model": "shakespeare", "prompt": ids[: context - 10]}  # no max_tokens: OpenAI's default of 16
    message = httpx.post(server.url + "/v1/completions", json=plain, timeout=60).json()["error"]["message"]
    assert "max_tokens=16 (the default; the request gave none)" in message
    long_chat = [{"role": "user", "content": CORPUS_TEXT * 40}]
    refused = httpx.post(server.url + "/v1/chat/completions", json={"model": "shakespeare", "messages": long_chat})
    assert refused.status_code == 400 and "no room for a reply" in refused.json()["error"]["message"]


def test_lm_evals_loglikelihood_request_shape(server, gen):
    """What lm-eval's local-completions sends for a loglikelihood request (tokenized): a batch of id lists with
    max_tokens 1, echo, logprobs 1, temperature 0 and seed 1234; it sums token_logprobs[context:-1] (the last entry
    is the generated token's) and calls the continuation greedy when each equals the best of its top_logprobs."""
    texts = ["ROMEO: But soft, what light", "JULIET: O Romeo, Romeo"]
    batch = [gen.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    body = {"model": "shakespeare", "prompt": batch, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234}
    reply = httpx.post(server.url + "/v1/completions", json={**body, "echo": True}, timeout=120)
    assert reply.status_code == 200, reply.text
    choices = sorted(reply.json()["choices"], key=lambda c: c["index"])
    scores = gen.score_ids(batch)
    for ids, choice, want in zip(batch, choices, scores.token_logprobs):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1 and len(lp["top_logprobs"]) == len(ids) + 1
        np.testing.assert_allclose(lp["token_logprobs"][1:-1], want, atol=1e-4)
        assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
        greedy = gen.generate_ids([ids], max_new_tokens=1, temperature=0.0)
        assert choice["text"].endswith(gen.tokenizer.decode(greedy.token_ids[0]))


def test_vllms_tokenize_and_detokenize_endpoints(server, gen):
    tok = gen.tokenizer
    text = "ROMEO: But soft, what light through yonder window breaks?"
    reply = httpx.post(server.url + "/tokenize", json={"model": "shakespeare", "prompt": text})
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["tokens"] == tok.encode(text) and out["count"] == len(out["tokens"]) and out["token_strs"] is None
    assert out["max_model_len"] == server.app.state.engine.max_len
    body = {"prompt": text, "add_special_tokens": False, "return_token_strs": True}
    bare = httpx.post(server.url + "/tokenize", json=body)
    assert bare.json()["tokens"] == tok.encode(text, add_special_tokens=False)
    assert bare.json()["token_strs"] == [tok.id_to_piece(i) for i in bare.json()["tokens"]]
    chat = httpx.post(server.url + "/tokenize", json={"messages": CONVERSATION}).json()
    assert chat["tokens"] == tok.apply_chat_template(CONVERSATION)
    back = httpx.post(server.url + "/detokenize", json={"tokens": out["tokens"]}).json()["prompt"]
    assert back == "<s>" + text  # special tokens as their strings, as vLLM writes them
    again = httpx.post(server.url + "/tokenize", json={"prompt": back, "add_special_tokens": False}).json()
    assert again["tokens"] == out["tokens"]
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["bos_token"] == "<s>" and info["eos_token"] == "</s>" and info["chat_template"] == CHAT_TEMPLATE
    for path, body, param in [
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": CONVERSATION}, "prompt"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens"),
        ("/tokenize", {"prompt": "a", "colour": 1}, "colour"),
        ("/tokenize", {"messages": "hi"}, "messages"),
        ("/detokenize", {"tokens": [1, tok.vocab_size]}, "tokens"),
        ("/detokenize", {"tokens": "1 2"}, "tokens"),
        ("/detokenize", {"tokens": [1], "model": "other"}, "model"),
    ]:
        refused = httpx.post(server.url + path, json=body)
        assert refused.status_code in (400, 404) and refused.json()["error"]["param"] == param, (path, body)


def test_six_stop_strings_and_one_longer_than_the_loops_matcher(server, gen):
    """lm-eval sends its task's stop strings plus the model's EOS string (6 for humaneval); a stop string of more
    tokens than the in-loop matcher holds is still found on the text."""
    prompt, settings = "ROMEO:", dict(max_new_tokens=48, temperature=0.0)
    free = gen.generate([prompt], **settings)
    assert len(free.token_ids[0]) == 48  # no EOS before the stop string
    pieces = IncrementalDecoder(gen.tokenizer, gen.tokenizer.encode(prompt)).decode_all(free.token_ids[0])
    long_stop = "".join(pieces[12:36])  # 24 tokens of the greedy text itself
    assert len(gen.tokenizer.encode(long_stop, add_special_tokens=False)) > 16
    stops = ["<never-1>", "<never-2>", "<never-3>", "<never-4>", "</s>", long_stop]
    want = gen.generate([prompt], stop=stops, **settings)
    assert want.finish_reasons == ["stop"] and want.texts[0] == free.texts[0][: free.texts[0].index(long_stop)]
    body = {"model": "shakespeare", "prompt": prompt, "max_tokens": 48, "temperature": 0.0, "stop": stops}
    got = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    assert got["choices"][0]["text"] == want.texts[0] and got["choices"][0]["finish_reason"] == "stop"
    sixteen = stops + [f"<never-{i}>" for i in range(10)]
    assert httpx.post(server.url + "/v1/completions", json={**body, "stop": sixteen}, timeout=120).status_code == 200
    refused = httpx.post(server.url + "/v1/completions", json={**body, "stop": sixteen + ["x"]}, timeout=120)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop"
    assert "at most 16 strings, got 17" in refused.json()["error"]["message"]


def test_a_repeated_prefix_is_reported_as_cached_tokens_and_in_the_metrics(server, gen):
    """The bundled model's server prefills in chunks of 64 (a quarter of its 256 positions), the prefix cache's
    block: a prompt of 150 tokens sent twice has its first 128 tokens' keys and values cached the second time, and
    gives the same tokens and log-probabilities."""
    client = server.client()
    prompt = (gen.tokenizer.encode(CORPUS_TEXT * 10)[1:])[:150]
    before = httpx.get(server.url + "/metrics").text
    body = dict(model="shakespeare", prompt=prompt, max_tokens=8, temperature=1.0, seed=5, logprobs=1)
    first, second = client.completions.create(**body), client.completions.create(**body)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 150
    assert second.usage.prompt_tokens_details.cached_tokens == 128
    assert first.choices[0].text == second.choices[0].text
    assert first.choices[0].logprobs.token_logprobs == second.choices[0].logprobs.token_logprobs
    after = httpx.get(server.url + "/metrics").text
    hits = _metric(after, "gpt_jax_prefix_cache_hits_total") - _metric(before, "gpt_jax_prefix_cache_hits_total")
    queries = _metric(after, "gpt_jax_prefix_cache_queries_total") - _metric(
        before, "gpt_jax_prefix_cache_queries_total"
    )
    assert hits >= 128 and queries == 300
    assert 0 < _metric(after, "gpt_jax_prefix_cache_hit_rate") <= 1
    assert 0 < _metric(after, "gpt_jax_prefix_cache_bytes") <= _metric(after, "gpt_jax_prefix_cache_budget_bytes")
