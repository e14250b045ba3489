"""`gpt-jax batch`: a file of requests in the OpenAI Batch API's format, run through the server's own handlers.

Input, one JSON object a line: {"custom_id", "method": "POST", "url": "/v1/completions" | "/v1/chat/completions",
"body": {...}}, bodies as `gpt-jax serve` accepts them. Output, one line per input line, in the order they finish:
{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error", "seed"}. A body the server refuses
gets its 400 response (as the server sends it); a line that is not a request at all (not JSON, no custom_id, another
URL or method, `stream`) gets `response: null` and an `error` (a refused body gets an `error` too, the server's
message); the other lines go on either way.

The requests go to the app of `server.create_app` in this process (httpx's ASGI transport: no socket, no HTTP
server), so a body is checked and answered exactly as the server would, on its continuous-batching engine.
The input is read twice, streaming: once for the custom_ids (refused up front when one repeats) and the line count,
once to send the requests, at most `concurrency` at a time; memory holds the custom_ids, not the bodies.

Resumable: results are appended as they finish, one write and flush a line (fsync'd every second), so a kill at any
moment leaves whole lines and at most one torn last line. Run again with the same arguments, it reads the output,
cuts a torn last line, skips the custom_ids already there and runs the rest: each input line once. A body without
a seed gets one drawn, sent and recorded in its line (`seed`), so every line can be reproduced, and a seeded body's
result does not depend on its batch-mates (the server's promise): a resumed run gives the bodies one run gives,
up to their `id` and `created`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
import uuid
from pathlib import Path

from gpt_jax.decoding.settings import draw_seed
from gpt_jax.errors import InputError, check

URLS = ("/v1/completions", "/v1/chat/completions")
MAX_LISTED = 10  # duplicate custom_ids named in the error
RETRY_SECONDS = 0.05  # a full engine queue (429) is retried after this
FSYNC_SECONDS = 1.0
RESULT_START = b'{"id": "batch_req_'  # how every result line begins (result_line's first key)


@dataclasses.dataclass
class Line:
    """One input line: a request, or why it is not one (`problem`)."""

    number: int  # 1-based
    custom_id: str | None
    url: str | None = None
    body: dict | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        """What marks the line done in the output: its custom_id, or its number when it has none."""
        return self.custom_id if self.custom_id is not None else f"line {self.number}"


def parse(number: int, text: str) -> Line:
    try:
        item = json.loads(text)
    except ValueError as e:
        return Line(number, None, problem=f"line {number} is not JSON: {e}")
    if not isinstance(item, dict):
        return Line(number, None, problem=f"line {number} is not a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Line(number, None, problem=f"line {number}: custom_id must be a non-empty string, got {custom_id!r}")
    line = Line(number, custom_id)
    method, url, body = item.get("method"), item.get("url"), item.get("body")
    if method != "POST":
        line.problem = f"method must be 'POST', got {method!r}"
    elif url not in URLS:
        line.problem = f"url must be one of {', '.join(map(repr, URLS))}, got {url!r}"
    elif not isinstance(body, dict):
        line.problem = f"body must be a JSON object, got {type(body).__name__}"
    elif body.get("stream"):
        line.problem = "stream is not available in a batch: each result is written whole"
    else:
        line.url, line.body = url, body
    return line


def input_lines(path: Path):
    """(number, text) of each non-blank line, read one at a time."""
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                yield number, text


def survey(path: Path) -> tuple[int, set[str]]:
    """The number of lines and their keys; an InputError naming the line numbers of repeated custom_ids."""
    first: dict[str, int] = {}
    repeats: dict[str, list[int]] = {}
    count = 0
    for number, text in input_lines(path):
        count += 1
        key = parse(number, text).key
        if key in first:
            repeats.setdefault(key, [first[key]]).append(number)
        else:
            first[key] = number
    if repeats:
        listed = "; ".join(f"{k!r} on lines {', '.join(map(str, n))}" for k, n in list(repeats.items())[:MAX_LISTED])
        more = f" (and {len(repeats) - MAX_LISTED} more)" if len(repeats) > MAX_LISTED else ""
        raise InputError(f"{path}: custom_id must be unique; repeated: {listed}{more}")
    return count, set(first)


def finished_keys(output: Path, keys: set[str]) -> set[str]:
    """The keys already in `output` (a previous run's results), read a line at a time, after cutting a torn last
    line from a kill; an InputError if the file holds something else (it is then left as it is)."""
    if not output.exists():
        return set()
    check(output.is_file(), InputError, f"--output {output} is not a regular file")
    size, done, good = output.stat().st_size, set(), 0
    with output.open("rb") as f:
        for raw in f:
            key = _result_key(raw) if raw.endswith(b"\n") else None
            if key is None:
                if good + len(raw) == size and raw.startswith(RESULT_START):  # the last line, torn by a kill
                    break
                raise InputError(
                    f"--output {output} holds a line that is not a batch result (at byte {good}); pass another --output"
                )
            check(
                key in keys,
                InputError,
                f"--output {output} holds a result for {key!r}, which is not in this input; pass another --output",
            )
            done.add(key)
            good += len(raw)
    if good < size:
        with output.open("r+b") as f:
            f.truncate(good)
    return done


def _result_key(raw: bytes) -> str | None:
    try:
        item = json.loads(raw)
        key = item["custom_id"] if item.get("custom_id") is not None else item["line"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return key if isinstance(key, str) else None


class Progress:
    """done/total, tokens/s and ETA on one terminal line (only on a terminal), and the summary at the end."""

    def __init__(self, total: int, skipped: int, stream=None):
        self.total, self.skipped, self.stream = total, skipped, stream or sys.stderr
        self.done = self.errors = self.tokens = 0
        self.start = self.shown = time.monotonic()
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()

    def add(self, tokens: int, error: bool) -> None:
        self.done, self.tokens, self.errors = self.done + 1, self.tokens + tokens, self.errors + error
        now = time.monotonic()
        if self.live and (now - self.shown > 0.5 or self.skipped + self.done == self.total):
            self.shown = now
            elapsed = max(now - self.start, 1e-9)
            left = self.total - self.skipped - self.done
            eta = left * elapsed / self.done
            width, at = 30, self.skipped + self.done
            bar = "#" * int(width * at / max(self.total, 1))
            print(
                f"\r[{bar:.<{width}}] {at}/{self.total}  {self.tokens / elapsed:,.0f} tok/s  ETA {eta:,.0f} s ",
                end="",
                file=self.stream,
                flush=True,
            )

    def summary(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        skipped = f", {self.skipped} already done" if self.skipped else ""
        errors = f"{self.errors} error{'' if self.errors == 1 else 's'}"
        return (
            f"gpt-jax batch: {self.done} requests ({errors}{skipped}), {self.tokens:,} tokens in {elapsed:.1f} s "
            f"({rate:,.0f} tok/s)"
        )


def result_line(line: Line, status: int | None, body: dict | None, seed: int | None) -> dict:
    if line.problem is not None:
        response, error = None, {"code": "invalid_line", "message": line.problem}
    else:  # a refused body: its response as the server sends it, and its message as the line's error
        response, error = {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}, None
        if status != 200:
            refusal = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
            error = {"code": refusal.get("code") or f"http_{status}", "message": refusal.get("message", "")}
    out = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id, "response": response, "error": error}
    if line.custom_id is None:
        out["line"] = line.key
    if seed is not None:
        out["seed"] = seed
    return out


def in_process_client(app):
    """An httpx client whose requests go straight to the ASGI `app` (no socket)."""
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://batch", timeout=None)


async def send(client, url: str, body: dict) -> tuple[int, dict, int | None]:
    """(status, response body, the seed sent) of one request; a body without a seed gets one drawn; a full queue
    (429) is retried."""
    seed = body.get("seed")
    if seed is None:
        seed = draw_seed()
        body = {**body, "seed": seed}
    while True:
        response = await client.post(url, json=body)
        if response.status_code != 429:
            return response.status_code, response.json(), seed if isinstance(seed, int) else None
        await asyncio.sleep(RETRY_SECONDS)


async def run_lines(app, path: Path, output: Path, skip: set[str], concurrency: int, progress: Progress) -> None:
    async with in_process_client(app) as client:
        with output.open("ab") as out:
            gate, running, synced = asyncio.Semaphore(concurrency), set(), [time.monotonic()]

            async def one(line: Line) -> None:
                try:
                    status, body, seed = (None, None, None) if line.problem else await send(client, line.url, line.body)
                    result = result_line(line, status, body, seed)
                    out.write((json.dumps(result, ensure_ascii=False) + "\n").encode())
                    out.flush()
                    if time.monotonic() - synced[0] > FSYNC_SECONDS:
                        os.fsync(out.fileno())
                        synced[0] = time.monotonic()
                    usage = (body or {}).get("usage") or {}
                    progress.add(usage.get("completion_tokens", 0), line.problem is not None or status != 200)
                finally:
                    gate.release()

            for number, text in input_lines(path):
                line = parse(number, text)
                if line.key in skip:
                    continue
                await gate.acquire()
                task = asyncio.create_task(one(line))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
            out.flush()
            os.fsync(out.fileno())


def run_batch(gen, path, output, model_name: str, concurrency: int | None = None, **server_options) -> Progress:
    """Run the batch file `path` into `output` (resuming what a previous run left there); returns the progress,
    whose `summary()` is the closing line."""
    from gpt_jax.serving.server import create_app

    for name, value in (("INPUT", path), ("--output", output)):
        check("\0" not in str(value), InputError, f"{name} {str(value)!r} is not a path: it holds a NUL character")
    path, output = Path(path), Path(output)
    check(path.is_file(), InputError, f"INPUT {path} is not a file")
    check(output.resolve() != path.resolve(), InputError, "--output must not be the input file")
    check(output.parent.is_dir(), InputError, f"--output {output}: its directory {output.parent} does not exist")
    total, keys = survey(path)
    skip = finished_keys(output, keys)
    slots = server_options.get("slots", 8)
    concurrency = concurrency or 4 * slots
    check(concurrency >= 1, InputError, f"concurrency must be >= 1, got {concurrency}")
    server_options.setdefault("max_queue", concurrency)
    app = create_app(gen, model_name, **server_options)
    progress = Progress(total, len(skip))  # finished_keys keeps only this input's keys
    finished = False
    try:
        asyncio.run(run_lines(app, path, output, skip, concurrency, progress))
        finished = True
    finally:  # interrupted: no waiting for requests whose results could not be written (a rerun redoes them)
        app.state.engine.close(None if finished else 0)
        if progress.live:
            print(file=progress.stream)
    return progress

