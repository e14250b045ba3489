"""`gpt-jax batch`: OpenAI Batch API files through the server's own handlers, on its engine; resumable after a
kill, each line once; bounded memory for a large file."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from gpt_jax.errors import InputError
from gpt_jax.jobs.batch_file import Progress, finished_keys, run_batch, survey

from .conftest import shared_cache_env

WORDS = "ROMEO JULIET the king of night and day my lord what is love".split()


def good_line(i: int, rng: random.Random, chat: bool) -> dict:
    body = {"model": "shakespeare", "max_tokens": rng.randint(1, 10), "temperature": rng.choice([0.0, 0.8, 1.0])}
    if i % 3:
        body["seed"] = 1000 + i
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        if i % 2:
            body.update(logprobs=True, top_logprobs=2)
    else:
        body["prompt"] = text if i % 5 else [text, text + " and"]
        if i % 2:
            body["logprobs"] = 2
    if i % 4 == 1:
        body["n"] = 2
    if i % 7 == 0:
        body["stop"] = [".", "\n"]
    url = "/v1/chat/completions" if chat else "/v1/completions"
    return {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}


BAD_LINES = [  # text of each line, or an object
    "{not json",
    "[1, 2]",
    {"method": "POST", "url": "/v1/completions", "body": {"model": "shakespeare", "prompt": "x"}},  # no custom_id
    {"custom_id": "bad-get", "method": "GET", "url": "/v1/completions", "body": {}},
    {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {"model": "shakespeare"}},
    {"custom_id": "bad-body", "method": "POST", "url": "/v1/completions", "body": "prompt"},
    {"custom_id": "bad-stream", "method": "POST", "url": "/v1/completions",
     "body": {"model": "shakespeare", "prompt": "x", "stream": True}},
    {"custom_id": "bad-max", "method": "POST", "url": "/v1/completions",
     "body": {"model": "shakespeare", "prompt": "x", "max_tokens": -1}},
    {"custom_id": "bad-temp", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "shakespeare", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}},
    {"custom_id": "bad-model", "method": "POST", "url": "/v1/completions", "body": {"model": "gpt-4", "prompt": "x"}},
]


def write_batch(path, count: int, bad: bool = True, chat: bool = True, seed: int = 0) -> list:
    rng = random.Random(seed)
    lines: list = [good_line(i, rng, chat and i % 2 == 0) for i in range(count - (len(BAD_LINES) if bad else 0))]
    for item in BAD_LINES if bad else []:
        lines.insert(rng.randrange(len(lines) + 1), item)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return lines


def read_results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(body: dict) -> dict:
    """A response body without what differs between two runs of the same request (its id and time)."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def test_a_mixed_file_gives_what_the_server_gives_and_an_error_line_per_bad_line(tmp_path, served_gen, server):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = write_batch(source, 200)
    progress = run_batch(served_gen, source, output, "shakespeare", slots=8)
    results = read_results(output)
    assert len(results) == 200 and (progress.done, progress.errors) == (200, 10)
    keys = [r["custom_id"] if r["custom_id"] is not None else r["line"] for r in results]
    assert len(set(keys)) == 200
    errors = [r for r in results if r["error"] is not None]
    assert len(errors) == 10
    refused = {r["custom_id"]: r for r in errors if r["response"] is not None}
    assert set(refused) == {"bad-max", "bad-temp", "bad-model"}
    assert refused["bad-model"]["response"]["status_code"] == 404
    assert "max_tokens" in refused["bad-max"]["error"]["message"]
    good = {r["custom_id"]: r for r in results if r["error"] is None}
    assert len(good) == 190 and all(r["response"]["status_code"] == 200 for r in good.values())
    assert all("seed" in r for r in good.values())
    by_id = {x["custom_id"]: x for x in lines if isinstance(x, dict) and x.get("custom_id") in good}
    assert [r["seed"] for k, r in good.items() if "seed" in by_id[k]["body"]] == [
        by_id[k]["body"]["seed"] for k in good if "seed" in by_id[k]["body"]
    ]

    def served(custom_id):  # the same body, with the seed the batch recorded, to the real server
        line = by_id[custom_id]
        body = {**line["body"], "seed": good[custom_id]["seed"]}
        return custom_id, httpx.post(server.url + line["url"], json=body, timeout=120).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(served, good))
    differ = [k for k in good if comparable(good[k]["response"]["body"]) != comparable(answers[k])]
    assert differ == []


def test_repeated_custom_ids_are_refused_with_their_line_numbers(tmp_path):
    source = tmp_path / "in.jsonl"
    item = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}
    source.write_text("\n".join(json.dumps({**item, "custom_id": c}) for c in "abcab") + "\n")
    with pytest.raises(InputError, match=r"repeated: 'a' on lines 1, 4; 'b' on lines 2, 5"):
        survey(source)


def test_an_output_that_is_not_this_inputs_results_is_refused_and_left_alone(tmp_path):
    source = tmp_path / "in.jsonl"
    write_batch(source, 20, bad=False, chat=False)
    _, keys = survey(source)
    mine = tmp_path / "notes.txt"
    for text in ("my notes", '{"custom_id": "someone-else", "response": null}\n', "line one\n"):
        mine.write_text(text)
        with pytest.raises(InputError, match="--output"):
            finished_keys(mine, keys)
        assert mine.read_text() == text
    torn = tmp_path / "out.jsonl"
    whole = json.dumps({"id": "batch_req_1", "custom_id": "req-3", "response": None, "error": None}) + "\n"
    torn.write_text(whole + '{"id": "batch_req_2", "custom_id": "req-4", "resp')
    assert finished_keys(torn, keys) == {"req-3"} and torn.read_text() == whole  # the torn last line is cut


KILLER = textwrap.dedent(
    """
    import sys
    from gpt_jax.cli.main import main
    sys.exit(main(["batch", sys.argv[1], "--output", sys.argv[2], "--slots", "4", "--concurrency", "8"]))
    """
)


@pytest.mark.slow
def test_killed_three_times_and_resumed_each_line_is_there_once_and_seeded_ones_as_in_one_run(tmp_path):
    import gpt_jax

    source, once, resumed = tmp_path / "in.jsonl", tmp_path / "once.jsonl", tmp_path / "resumed.jsonl"
    write_batch(source, 60, bad=False, chat=False, seed=1)
    run_batch(gpt_jax.load(), source, once, "shakespeare", slots=4, concurrency=8)
    rng = random.Random(7)
    for kill in range(3):
        before = len(resumed.read_bytes().splitlines()) if resumed.exists() else 0
        target = before + rng.randint(3, 12)
        child = subprocess.Popen(
            [sys.executable, "-c", KILLER, str(source), str(resumed)], stderr=subprocess.PIPE, env=shared_cache_env()
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            if resumed.exists() and resumed.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert resumed.read_bytes().count(b"\n") >= target, child.stderr.read().decode()[-2000:]
        if kill == 1:  # a kill in the middle of a write: half a line at the end
            with resumed.open("ab") as f:
                f.write(b'{"id": "batch_req_torn", "custom_id": "req-5')
    done = subprocess.run(
        [sys.executable, "-c", KILLER, str(source), str(resumed)], capture_output=True, text=True, env=shared_cache_env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already done" in done.stderr
    results, reference = read_results(resumed), {r["custom_id"]: r for r in read_results(once)}
    assert sorted(r["custom_id"] for r in results) == sorted(reference)  # each line exactly once
    lines = {x["custom_id"]: x for x in map(json.loads, source.read_text().splitlines())}
    seeded = [r for r in results if "seed" in lines[r["custom_id"]]["body"]]
    assert len(seeded) == 40
    differ = [
        r["custom_id"]
        for r in seeded
        if comparable(r["response"]["body"]) != comparable(reference[r["custom_id"]]["response"]["body"])
    ]
    assert differ == []
    assert all(isinstance(r["seed"], int) for r in results)


MEMORY = textwrap.dedent(
    """
    import json, resource, sys
    import gpt_jax
    from gpt_jax.jobs.batch_file import run_batch
    source, output = sys.argv[1], sys.argv[2]
    progress = run_batch(gpt_jax.load(), source, output, "shakespeare", slots=4)
    print(json.dumps({"done": progress.done, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    """
)


@pytest.mark.slow
def test_a_100000_line_file_runs_in_memory_that_does_not_grow_with_it(tmp_path):
    """Both files hold 10 requests still to run, the rest already in the output (a resumed run): a run reads every
    line of both. Bodies of 1,000 characters make the large file 110 MB."""
    peaks = {}
    for count in (1_000, 100_000):
        source, output = tmp_path / f"in{count}.jsonl", tmp_path / f"out{count}.jsonl"
        prompt = "the king " * 111
        with source.open("w") as f, output.open("w") as out:
            for i in range(count):
                body = {"model": "shakespeare", "prompt": prompt, "max_tokens": 2, "seed": i}
                f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}))
                f.write("\n")
                if i >= 10:
                    result = {"id": f"batch_req_{i}", "custom_id": f"r{i}", "response": None, "error": None}
                    out.write(json.dumps(result) + "\n")
        run = subprocess.run(
            [sys.executable, "-c", MEMORY, str(source), str(output)], capture_output=True, text=True,
            env=shared_cache_env(),
        )
        assert run.returncode == 0, run.stderr[-2000:]
        report = json.loads(run.stdout.splitlines()[-1])
        assert report["done"] == 10
        peaks[count] = report["peak_kb"] / 1024
        assert len(read_results(output)) == count
    file_mb = os.path.getsize(tmp_path / "in100000.jsonl") / 2**20
    print(f"peak resident memory: {peaks} MB; the large file {file_mb:.0f} MB")
    assert peaks[100_000] - peaks[1_000] < 48 < file_mb / 2  # the custom_ids' set, not the bodies


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_shows_done_total_rate_and_eta_on_a_terminal_and_a_summary_at_the_end():
    screen = Terminal()
    progress = Progress(total=10, skipped=2, stream=screen)
    progress.start -= 4.0  # four seconds in
    for _ in range(4):
        progress.shown -= 1.0
        progress.add(tokens=50, error=False)
    line = screen.getvalue().split("\r")[-1]
    assert line.startswith("[") and "6/10" in line and " tok/s" in line and "ETA" in line
    eta = float(line.split("ETA ")[1].split(" s")[0])
    assert 3.0 <= eta <= 5.0  # 4 left at about a second each
    progress.add(tokens=0, error=True)
    summary = progress.summary()
    assert summary.startswith("gpt-jax batch: 5 requests (1 error, 2 already done), 200 tokens in ")
    quiet = io.StringIO()
    Progress(total=3, skipped=0, stream=quiet).add(tokens=1, error=False)
    assert quiet.getvalue() == ""  # no bar where the output is not a terminal
