"""`gpt-jax serve`: the OpenAI API over HTTP (Starlette + uvicorn), backed by the continuous-batching `Engine`.

    GET /v1/models   POST /v1/completions   POST /v1/chat/completions   GET /health   GET /metrics
    POST /tokenize   POST /detokenize   GET /tokenizer_info   (vLLM's shapes: `tokenize_api`)

Each prompt of a request becomes one engine request (its n samples are rows with row seeds i*n + j, as
`generate` numbers them), so a seeded request gives the tokens `generate` gives for the same settings, whatever
else the server is running. A full queue answers 429 with Retry-After; a client that goes away has its slots
released at the next dispatch; SIGTERM stops new connections and finishes the requests in flight (uvicorn's
graceful shutdown), then the engine stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpt_jax.decoding.settings import GenerationSettings, draw_seed
from gpt_jax.errors import GptJaxError
from gpt_jax.serving import openai_api as api
from gpt_jax.serving import tokenize_api
from gpt_jax.serving.engine import Engine, EngineClosed, QueueFull, Request
from gpt_jax.serving.options import check_slots
from gpt_jax.serving.metrics import Metrics
from gpt_jax.decoding.rows import MAX_STOP_SEQUENCES, MAX_STOP_TOKENS
from gpt_jax.text.stops import stop_token_ids

RETRY_AFTER_SECONDS = 1


class Call:
    """One HTTP request's prompts in the engine, their rows' text, and the events still to come."""

    def __init__(
        self, server: Server, loop, prompts, settings: dict, stops: list[str], prompt_top=-1, generate=True,
        defaulted=False,
    ):  # fmt: skip
        """loop: the server's event loop, which takes the engine's events (the call may be made in a worker thread,
        as `Server._start` makes it: a constraint's automaton may take seconds to compile). prompt_top = k >= 0:
        score the prompts too (k alternatives); generate=False: only that (echo with max_tokens 0): the engine
        prefills and scores each prompt, which may fill the context, and generates nothing. defaulted: the request
        gave no max_tokens (an error then says the value was the default)."""
        self.server, self.prompts, self.generate = server, prompts, generate
        self.prompt_scores: dict[int, object] = {}
        self.events: asyncio.Queue = asyncio.Queue()
        tok = server.gen.tokenizer
        self.requests, self.rows = [], []
        seed = settings.get("seed")
        seed = draw_seed() if seed is None else seed
        for i, ids in enumerate(prompts):
            try:
                prep = server.engine.prepare(ids, GenerationSettings.of({**settings, "seed": seed}), not generate)
            except GptJaxError as e:
                raise api.from_input_error(e, defaulted) from None
            inputs = prep.inputs.replace(row_seeds=prep.inputs.row_seeds + i * prep.rows)  # rows i*n .. i*n+n-1
            prep = dataclasses.replace(prep, inputs=inputs)
            on_event = lambda event, i=i: loop.call_soon_threadsafe(self.events.put_nowait, (i, event))
            self.requests.append(Request(prep, on_event, prompt_top, score_only=not generate))
            self.rows += [api.RowText(tok, ids, stops) for _ in range(prep.rows)]
        self.n, self.open = self.requests[0].rows, len(self.rows)  # samples per prompt; rows still running

    def submit(self) -> None:
        for request in self.requests:
            try:
                self.server.engine.submit(request)
            except (QueueFull, EngineClosed) as e:
                self.cancel()
                status = 429 if isinstance(e, QueueFull) else 503
                raise api.ApiError(status, str(e), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
            self.server.metrics.prompt_tokens.inc(request.prompt_len)

    def cancel(self) -> None:
        for request in self.requests:
            if not request.finished:
                self.server.engine.cancel(request)

    async def next_update(self) -> tuple[int, str, int, bool] | None:
        """(choice index, new text, tokens before this event, finished?) of the next event; None when the event
        changes no choice's text (the prompt's scores, or events after a row ended)."""
        i, event = await self.events.get()
        if event.kind == "error":
            self.cancel()
            raise api.ApiError(500, f"generation failed: {event.error}")
        if event.kind == "prompt":
            self.prompt_scores[i] = event
            return None
        index = i * self.n + event.row
        row = self.rows[index]
        before = len(row.tokens)
        if row.finish is not None:  # ended by a stop string; events already on their way are dropped
            return None
        if not self.generate:  # echo only: nothing generated is shown
            if event.kind == "tokens":
                return None
            row.finish, self.open = "length", self.open - 1
            return index, "", 0, True
        if event.kind == "tokens":
            text = row.add(event.tokens, event.logprobs, event.top)
            if row.stopped:  # a stop string spelled by other tokens: the slot is not needed any more
                self.server.engine.cancel(self.requests[i], event.row)
                text += row.end("stop")
        else:
            text = row.end(event.finish)
        done = row.finish is not None
        self.open -= done
        return index, text, before, done

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(row.kept() for row in self.rows)
        cached = sum(request.cached_tokens for request in self.requests)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


class Server:
    def __init__(self, gen, model_name: str, engine: Engine, metrics: Metrics):
        self.gen, self.model_name, self.engine, self.metrics = gen, model_name, engine, metrics

    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is None:
            raise api.bad("model is required", "model")
        if model != self.model_name:
            raise api.ApiError(
                404, f"model {model!r} does not exist; this server has {self.model_name!r}", "model", "model_not_found"
            )

    async def models(self, request: HttpRequest) -> Response:
        entry = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "gpt-jax"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(self, request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "slots_busy": self.engine.busy, "queued": self.engine.queued})

    async def metrics_text(self, request: HttpRequest) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def _optional_model(self, body: dict) -> None:
        if body.get("model") is not None:
            self.check_model(body)

    async def tokenize(self, request: HttpRequest) -> Response:
        body = api.parse_json(await request.body())
        self._optional_model(body)
        return JSONResponse(tokenize_api.tokenize(body, self.gen.tokenizer, self.engine.max_len))

    async def detokenize(self, request: HttpRequest) -> Response:
        body = api.parse_json(await request.body())
        self._optional_model(body)
        return JSONResponse(tokenize_api.detokenize(body, self.gen.tokenizer))

    async def tokenizer_info(self, request: HttpRequest) -> Response:
        return JSONResponse(tokenize_api.tokenizer_info(self.gen.tokenizer, self.engine.max_len))

    async def completions(self, request: HttpRequest) -> Response:
        body = api.parse_json(await request.body())
        self.check_model(body)
        prompts, opts = api.completion_request(body, self.gen.tokenizer)
        generate = not (opts["echo"] and body.get("max_tokens") == 0)  # echo only: the prompt (and its scores)
        settings = api.settings_of(body if generate else {**body, "max_tokens": 1}, self.gen.defaults, 16)
        k = opts["logprobs"]
        prompt_top = k if opts["echo"] and k is not None else (-1 if generate else 0)
        call = await self._start(prompts, settings, k or 0, prompt_top, generate, not api.gives_budget(body))
        kind, prefix = "text_completion", api.new_id("cmpl")
        ids, tok = self._token_ids(opts), self.gen.tokenizer
        echo = [tok.decode(p) if opts["echo"] else "" for p in call.prompts]

        def choice(index, text, start=0, end=None, with_prompt=True):
            row, i = call.rows[index], index // call.n
            logprobs = None
            if k is not None:
                end = row.kept() if end is None else min(end, row.kept())
                logprobs = api.completion_logprobs(tok, row, start, end, len(echo[i]) if with_prompt else 0)
                if opts["echo"] and with_prompt:
                    logprobs = api.join_logprobs(
                        api.prompt_logprobs(tok, call.prompts[i], call.prompt_scores[i]), logprobs
                    )
            chosen = ids(row, start, end)
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": row.finish, **chosen}

        if opts["stream"]:

            def chunk(index, text, before):
                first = before == 0
                c = choice(
                    index, (echo[index // call.n] if first else "") + text, before, len(call.rows[index].tokens), first
                )
                return {"id": prefix, "object": kind, "created": api.now(), "model": self.model_name, "choices": [c]}

            return self._stream(request, call, chunk, body)
        await self._wait(request, call)
        choices = [choice(i, echo[i // call.n] + row.final_text()) for i, row in enumerate(call.rows)]
        return self._reply(prefix, kind, choices, call)

    async def chat(self, request: HttpRequest) -> Response:
        body = api.parse_json(await request.body())
        self.check_model(body)
        ids, opts = api.chat_request(body, self.gen.tokenizer)
        room = self.engine.max_len - len(ids)
        if room < 1 and not api.gives_budget(body):
            raise api.bad(
                f"the conversation has {len(ids)} tokens through the chat template, the server's context is "
                f"{self.engine.max_len}: no room for a reply",
                "messages",
            )
        settings = api.settings_of(body, self.gen.defaults, max(room, 1))
        call = await self._start([ids], settings, opts["top_logprobs"], defaulted=not api.gives_budget(body))
        kind, prefix = "chat.completion", api.new_id("chatcmpl")
        token_ids = self._token_ids(opts)

        def logprobs(row, start=0, end=None):
            if not opts["logprobs"]:
                return None
            end = row.kept() if end is None else min(end, row.kept())
            return api.chat_logprobs(self.gen.tokenizer, row, start, end)

        if opts["stream"]:

            def chunk(index, text, before):
                row = call.rows[index]
                delta = {"role": "assistant", "content": text} if before == 0 else {"content": text}
                c = {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs(row, before, len(row.tokens)),
                    "finish_reason": row.finish,
                }
                return {
                    "id": prefix,
                    "object": kind + ".chunk",
                    "created": api.now(),
                    "model": self.model_name,
                    "choices": [c],
                }

            return self._stream(request, call, chunk, body)
        await self._wait(request, call)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": row.final_text()},
                "logprobs": logprobs(row),
                "finish_reason": row.finish,
                **token_ids(row),
            }
            for i, row in enumerate(call.rows)
        ]
        return self._reply(prefix, kind, choices, call)

    @staticmethod
    def _token_ids(opts: dict):
        """The `return_token_ids` extension: a choice's generated ids (up to a stop string), when asked for."""
        def ids(row, start=0, end=None):  # in a stream, the ids a chunk adds (as vLLM's chunks carry them)
            kept = row.kept()
            return {"token_ids": row.tokens[start : kept if end is None else min(end, kept)]}

        return ids if opts["return_token_ids"] else lambda row, start=0, end=None: {}

    async def _start(self, prompts, settings: dict, top: int, prompt_top=-1, generate=True, defaulted=False) -> Call:
        """defaulted: the request set no token budget (see `Call`)."""
        stops = settings.pop("stop", None) or []
        if stops:
            settings["stop_ids"] = stop_token_ids(self.gen.tokenizer, stops, MAX_STOP_SEQUENCES, MAX_STOP_TOKENS)
        settings = {**settings, "top_logprobs": top}
        loop = asyncio.get_running_loop()  # the requests are prepared off it, so a compiling automaton holds no other
        call = await asyncio.to_thread(Call, self, loop, prompts, settings, stops, prompt_top, generate, defaulted)
        call.submit()
        return call

    async def _wait(self, request: HttpRequest, call: Call) -> None:
        """Until every row of the call ends; a client that goes away cancels it."""
        try:
            while call.open:
                try:
                    await asyncio.wait_for(call.next_update(), timeout=1.0)  # None or an update: nothing to send
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise
        finally:
            call.cancel()

    def _reply(self, prefix: str, kind: str, choices: list, call: Call) -> Response:
        body = {"id": prefix, "object": kind, "created": api.now(), "model": self.model_name, "choices": choices}
        return JSONResponse({**body, "usage": call.usage()})

    def _stream(self, request: HttpRequest, call: Call, chunk, body: dict) -> Response:
        options = body.get("stream_options") or {}
        with_usage = isinstance(options, dict) and options.get("include_usage") is True

        async def events():
            try:
                while call.open:
                    try:
                        update = await call.next_update()
                    except api.ApiError as e:
                        yield f"data: {json.dumps(e.body())}\n\n"
                        return
                    if update is None:
                        continue
                    index, text, before, done = update
                    if text or done or before == 0:
                        yield f"data: {json.dumps(chunk(index, text, before))}\n\n"
                if with_usage:
                    last = {**chunk(0, "", 1), "choices": [], "usage": call.usage()}
                    yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # also when the client went away: its slots are released at the next dispatch
                call.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")


def create_app(gen, model_name: str = "gpt-jax", slots: int = 8, max_queue: int = 64, **engine_options) -> Starlette:
    """The ASGI app; its engine starts now and stops when the app shuts down (after requests in flight)."""
    check_slots(slots)  # before the metrics size their histograms by it
    metrics = Metrics(slots)
    engine = Engine(gen, slots, max_queue, observer=metrics, **engine_options)
    metrics.watch(engine)
    server = Server(gen, model_name, engine, metrics)

    def counted(endpoint: str, handler):
        async def wrapped(request: HttpRequest) -> Response:
            try:
                response = await handler(request)
            except api.ApiError as e:
                response = JSONResponse(e.body(), status_code=e.status, headers=e.headers)
            metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
            return response

        return wrapped

    async def not_found(request: HttpRequest, exc: HTTPException) -> Response:
        error = api.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def server_error(request: HttpRequest, exc: Exception) -> Response:
        return JSONResponse(api.ApiError(500, f"internal error: {type(exc).__name__}: {exc}").body(), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    routes = [
        Route("/v1/models", counted("models", server.models), methods=["GET"]),
        Route("/v1/completions", counted("completions", server.completions), methods=["POST"]),
        Route("/v1/chat/completions", counted("chat", server.chat), methods=["POST"]),
        Route("/tokenize", counted("tokenize", server.tokenize), methods=["POST"]),
        Route("/detokenize", counted("detokenize", server.detokenize), methods=["POST"]),
        Route("/tokenizer_info", counted("tokenizer_info", server.tokenizer_info), methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found, Exception: server_error}
    )
    app.state.engine, app.state.metrics = engine, metrics
    return app
