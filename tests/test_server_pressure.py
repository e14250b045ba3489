"""The server under pressure: bad requests get their 4xx in OpenAI's error shape and the server goes on; a full
queue answers 429; a client that leaves frees its slot; SIGTERM finishes the requests in flight, then exits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import RunningServer

ROOT = Path(__file__).resolve().parent.parent
LONG = {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 240, "min_tokens": 240, "temperature": 1.0}


@pytest.fixture(scope="module")
def gen(served_gen):
    return served_gen


OK = {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 4}
CHAT = {"model": "shakespeare", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
BAD_REQUESTS = [  # (path, body: dict or raw bytes, status, param or None)
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {**OK, "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {k: v for k, v in OK.items() if k != "model"}, 400, "model"),
    ("/v1/completions", {**OK, "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {**OK, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**OK, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "n": 0}, 400, "n"),
    ("/v1/completions", {**OK, "n": 9}, 400, None),
    ("/v1/completions", {**OK, "prompt": []}, 400, "prompt"),
    ("/v1/completions", {**OK, "prompt": 5}, 400, "prompt"),
    ("/v1/completions", {**OK, "prompt": [99999]}, 400, "prompt"),
    ("/v1/completions", {**OK, "prompt": "word " * 400}, 400, None),
    ("/v1/completions", {**OK, "logprobs": 6}, 400, "logprobs"),
    ("/v1/completions", {**OK, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("/v1/completions", {**OK, "logit_bias": {"5": 500}}, 400, "logit_bias"),
    ("/v1/completions", {**OK, "stop": 5}, 400, "stop"),
    ("/v1/completions", {**OK, "stop": [f"s{i}" for i in range(17)]}, 400, "stop"),  # 16 are taken
    ("/v1/completions", {**OK, "frobnicate": True}, 400, "frobnicate"),
    ("/v1/completions", {**OK, "seed": -1}, 400, "seed"),
    ("/v1/completions", {**OK, "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {**OK, "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {**OK, "temperature": True}, 400, "temperature"),
    ("/v1/chat/completions", {k: v for k, v in CHAT.items() if k != "messages"}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user"}]}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 3}, 400, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 4, "max_completion_tokens": 4}, 400, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "model": "other"}, 404, "model"),
]


def test_each_bad_request_gets_its_4xx_and_the_server_keeps_serving(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for path, body, status, param in BAD_REQUESTS:
            if isinstance(body, bytes):
                response = client.post(path, content=body, headers={"content-type": "application/json"})
            else:
                response = client.post(path, json=body)
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"] in ("invalid_request_error", "not_found_error"), error
            assert param is None or error["param"] == param, (body, error)
        assert client.get("/v1/nothing").status_code == 404
        assert client.post("/v1/models").status_code == 405
        assert client.post("/v1/completions", json=OK).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    cancelled = '{why="cancelled"}'
    before = _metric(httpx.get(server.url + "/metrics").text, "gpt_jax_slot_leaves_total" + cancelled)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            assert server.engine.busy == 1
    deadline = time.monotonic() + 10
    while server.engine.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.engine.busy == 0
    leaves = lambda: _metric(httpx.get(server.url + "/metrics").text, "gpt_jax_slot_leaves_total" + cancelled)
    while leaves() == before and time.monotonic() < deadline:  # counted when the next dispatch frees the slot
        time.sleep(0.01)
    assert leaves() == before + 1


def test_a_full_queue_answers_429_with_retry_after(gen):
    small = RunningServer(gen, "shakespeare", slots=1, max_queue=1)
    try:

        async def run():
            async with httpx.AsyncClient(base_url=small.url, timeout=120) as client:
                async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as long_stream:
                    lines = long_stream.aiter_lines()
                    await anext(lines)  # the slot is taken
                    short = [client.post("/v1/completions", json=OK) for _ in range(4)]
                    responses = await asyncio.gather(*short)
                    rest = [line async for line in lines]
                return responses, rest

        responses, rest = asyncio.run(run())
        statuses = [r.status_code for r in responses]
        assert 429 in statuses and set(statuses) <= {200, 429}, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert "data: [DONE]" in rest[-2:]
    finally:
        small.stop()


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight_then_exits(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPT_JAX_COMPILE_CACHE": "off"}
    command = [sys.executable, "-m", "gpt_jax.cli.main", "serve", "--port", "0", "--slots", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        assert match, line + process.stderr.read()
        url = match.group(1)
        chunks = []
        with httpx.Client(base_url=url, timeout=120) as client:
            with client.stream("POST", "/v1/completions", json={**LONG, "stream": True, "logprobs": 0}) as response:
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    if not chunks:
                        process.send_signal(signal.SIGTERM)
                        time.sleep(0.2)
                        with pytest.raises(httpx.ConnectError):  # no new connections
                            httpx.get(url + "/health", timeout=5)
                    chunks.append(line[len("data: ") :])
        assert chunks[-1] == "[DONE]"
        events = [json.loads(c) for c in chunks[:-1]]
        tokens = sum(len(e["choices"][0]["logprobs"]["tokens"]) for e in events)
        assert tokens == 240 and events[-1]["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_request_that_fails_gets_a_500_and_the_others_are_served(gen, monkeypatch):
    running = RunningServer(gen, "shakespeare", slots=4)
    try:
        insert = running.engine.programs.insert
        poison = gen.tokenizer.encode("poison")

        def failing(state, slot, prompt, *rest):
            if list(prompt[-len(poison) :]) == poison:
                raise RuntimeError("injected failure")
            return insert(state, slot, prompt, *rest)

        monkeypatch.setattr(running.engine.programs, "insert", failing)

        async def run():
            async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
                bodies = [{**OK, "prompt": p, "max_tokens": 16} for p in ("ROMEO:", "poison", "JULIET:", "HAMLET:")]
                return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))

        responses = asyncio.run(run())
        assert [r.status_code for r in responses] == [200, 500, 200, 200]
        assert "injected failure" in responses[1].json()["error"]["message"]
        assert httpx.post(running.url + "/v1/completions", json=OK, timeout=60).status_code == 200
    finally:
        running.stop()


def test_the_serve_command_checks_its_flags(capsys):
    from tests.conftest import run_cli

    code, _, err = run_cli(capsys, ["serve", "--port", "70000"])
    assert code == 2 and "--port must be in [0, 65535], got 70000" in err
    code, _, err = run_cli(capsys, ["serve", "--slots", "0"])
    assert code == 2 and "must be an integer >= 1" in err
    code, _, err = run_cli(capsys, ["serve", "--prefix-cache-gb", "-1"])
    assert code == 2 and "--prefix-cache-gb: must be a number >= 0, got -1" in err
    code, _, err = run_cli(capsys, ["batch", "x.jsonl", "--output", "y.jsonl", "--prefix-cache-gb", "nan"])
    assert code == 2 and "must be a number >= 0, got nan" in err
    from gpt_jax.cli.parser import build_parser

    parse = build_parser()[0].parse_args
    assert parse(["serve"]).prefix_cache_gb == 1.0 and parse(["serve", "--no-prefix-cache"]).prefix_cache_gb == 0
    assert parse(["batch", "x", "--output", "y", "--prefix-cache-gb", "0.25"]).prefix_cache_gb == 0.25
