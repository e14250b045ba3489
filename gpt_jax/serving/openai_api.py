"""The OpenAI API's request bodies -> generation settings, and generated rows -> its response objects.

Completions and chat completions take the OpenAI names (max_tokens, logprobs, ...) and a few common extensions
(top_k, min_p, repetition_penalty, min_tokens); every value is then checked by `prepare.prepare`, as `generate`
checks it. A setting the request leaves out takes the checkpoint's own default (generation_config.json) where it has
one, else OpenAI's (temperature 1, top_p 1; max_tokens 16 for completions, the rest of the context for chat).

Text follows `generate`: each row is decoded incrementally from its prompt, stop strings end it (and its slot is
freed at once), and text that could still grow into a stop string is held back from a stream.
"""

from __future__ import annotations

import json
import re
import secrets
import time

from gpt_jax.errors import GptJaxError
from gpt_jax.text.detokenize import IncrementalDecoder
from gpt_jax.text.stops import StopText, stop_strings
from gpt_jax.text.tokenizer import check_text

OUR_NAMES = {  # OpenAI (or vLLM) name -> GenerationSettings name
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "n": "n",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
}
THEIR_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "top_logprobs": "logprobs"}
IGNORED = {"user", "metadata", "store", "service_tier", "stream_options"}  # accepted, no effect on the tokens
COMPLETION_FIELDS = {
    "model", "prompt", "stream", "logprobs", "echo", "stop", "logit_bias", "best_of", "suffix", "response_format"
}  # fmt: skip
CHAT_FIELDS = {"model", "messages", "stream", "logprobs", "top_logprobs", "stop", "logit_bias", "response_format"}
# return_token_ids: each choice also carries its generated ids; structured_outputs {"regex" | "choice" | "json" |
# "json_object"} and the older guided_regex / guided_choice / guided_json: constraints (vLLM's names for them all)
EXTENSIONS = {"return_token_ids", "structured_outputs", "guided_regex", "guided_choice", "guided_json"}
VLLM_CONSTRAINTS = {"regex": "regex", "choice": "choice", "json": "json_schema", "json_object": "json_object"}
MAX_COMPLETION_LOGPROBS, MAX_CHAT_LOGPROBS = 5, 20


class ApiError(Exception):
    """An error response in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 503: "unavailable"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param, "invalid_value" if param else None)


def from_input_error(error: GptJaxError, defaulted: bool = False) -> ApiError:
    """A typed error of the library -> 400, in the API's names; `defaulted`: the request gave no max_tokens, so a
    max_tokens the message names is marked as the default."""
    message = str(error)
    if defaulted:
        message = re.sub(r"max_new_tokens=(\d+)", r"max_tokens=\1 (the default; the request gave none)", message)
    first = message.split(" ")[0]
    known = set(OUR_NAMES.values()) | set(THEIR_NAMES) | {"logit_bias", "stop", "prompt"}
    param = THEIR_NAMES.get(first, first) if first in known else None
    for ours, theirs in THEIR_NAMES.items():
        message = message.replace(ours, theirs)
    return bad(message, param)


def parse_json(raw: bytes) -> dict:
    """The request body: a JSON object, else 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def check_fields(body: dict, allowed: set[str], listed: set[str] | None = None) -> None:
    """400 naming the first field of `body` not in `allowed`; the message lists `listed` (default: `allowed`)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(listed or allowed))})", unknown[0])


def _check_fields(body: dict, allowed: set[str]) -> None:
    check_fields(body, allowed | set(OUR_NAMES) | IGNORED | EXTENSIONS, allowed | set(OUR_NAMES))


def flag(body: dict, name: str, default: bool = False) -> bool:
    """A true/false field (absent or null: `default`), else 400 naming it."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {value!r}", name)
    return value


def settings_of(body: dict, defaults: dict, max_tokens_default: int) -> dict:
    """The generation settings a request gives, over the checkpoint's defaults and OpenAI's."""
    given = {}
    for theirs, ours in OUR_NAMES.items():
        if body.get(theirs) is not None:
            if isinstance(body[theirs], bool):  # JSON true is not a number
                raise bad(f"{theirs} must be a number, got {body[theirs]!r}", theirs)
            given[ours] = body[theirs]
    if body.get("stop") is not None:
        try:
            given["stop"] = stop_strings(body["stop"]) or None
        except GptJaxError as e:
            raise bad(str(e), "stop") from None
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise bad("logit_bias must be an object {token id: value}", "logit_bias")
        try:
            given["logit_bias"] = {int(k): v for k, v in bias.items()}
        except (TypeError, ValueError):
            raise bad("logit_bias keys must be token ids (integers as strings)", "logit_bias") from None
    base = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": max_tokens_default}
    return {**base, **defaults, **given, **constraint_settings(body)}


def constraint_settings(body: dict) -> dict:
    """response_format (OpenAI's), structured_outputs and guided_* (vLLM's) -> at most one constraint setting."""
    found = {}
    rf = body.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_object":
            found["response_format"] = ("json_object", True)
        elif kind == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
                raise bad("response_format json_schema needs {\"name\", \"schema\": {...}}", "response_format")
            found["response_format"] = ("json_schema", spec["schema"])
        elif kind != "text":
            raise bad('response_format type must be "text", "json_object" or "json_schema"', "response_format")
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict) or set(outputs) - set(VLLM_CONSTRAINTS):
            raise bad(f"structured_outputs takes one of {', '.join(VLLM_CONSTRAINTS)}", "structured_outputs")
        for name, value in outputs.items():
            if value is not None and value is not False:
                found[f"structured_outputs.{name}"] = (VLLM_CONSTRAINTS[name], value)
    for name in ("regex", "choice", "json"):
        if body.get(f"guided_{name}") is not None:
            found[f"guided_{name}"] = (VLLM_CONSTRAINTS[name], body[f"guided_{name}"])
    if len(found) > 1:
        raise bad(f"give one constraint, got {', '.join(found)}", next(iter(found)).split(".")[0])
    return dict(found.values())


def gives_budget(body: dict) -> bool:
    """Whether the request sets its token budget (max_tokens or max_completion_tokens)."""
    return body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None


def completion_request(body: dict, tokenizer) -> tuple[list[list[int]], dict]:
    """A completions body -> (prompts as ids, options: stream, echo, logprobs)."""
    _check_fields(body, COMPLETION_FIELDS)
    if body.get("suffix") is not None:
        raise bad("suffix is not supported", "suffix")
    if body.get("best_of") not in (None, body.get("n", 1)):
        raise bad("best_of must equal n (ranking by likelihood is not supported)", "best_of")
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_id(x) for x in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or len(prompt) > 64:
        raise bad(
            "prompt must be a string, a list of 1-64 strings, or token ids (a list, or a list of lists)", "prompt"
        )
    prompts = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            try:
                ids = tokenizer.encode(check_text(p, f"prompt {i}"))
            except GptJaxError as e:
                raise bad(str(e), "prompt") from None
        elif isinstance(p, list) and p and all(_is_id(x) for x in p):
            ids = list(p)
        else:
            raise bad(f"prompt {i} must be a non-empty string or a non-empty list of token ids", "prompt")
        if not ids:
            raise bad(f"prompt {i} is empty", "prompt")
        prompts.append(ids)
    logprobs = body.get("logprobs")
    if logprobs is not None and (not _is_id(logprobs) or logprobs > MAX_COMPLETION_LOGPROBS):
        raise bad(f"logprobs must be an integer in [0, {MAX_COMPLETION_LOGPROBS}], got {logprobs!r}", "logprobs")
    echo = flag(body, "echo")
    if body.get("max_tokens") == 0 and not echo:
        raise bad(
            "max_tokens must be at least 1 (0 only with echo: the prompt and its log-probabilities)", "max_tokens"
        )
    if body.get("max_tokens") == 0 and body.get("min_tokens") not in (None, 0):
        raise bad(f"min_tokens={body['min_tokens']!r} is more than max_tokens=0", "min_tokens")
    options = {"stream": flag(body, "stream"), "echo": echo, "logprobs": logprobs}
    return prompts, {**options, "return_token_ids": flag(body, "return_token_ids")}


def chat_request(body: dict, tokenizer) -> tuple[list[int], dict]:
    """A chat body -> (prompt ids through the chat template, options: stream, logprobs, top_logprobs)."""
    _check_fields(body, CHAT_FIELDS)
    if tokenizer.chat_template is None:
        raise bad("this model has no chat template: use /v1/completions", "messages")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise bad("give max_tokens or max_completion_tokens, not both", "max_tokens")
    try:
        ids = tokenizer.apply_chat_template(body.get("messages"))
    except GptJaxError as e:
        raise bad(str(e), "messages") from None
    logprobs = flag(body, "logprobs")
    top = body.get("top_logprobs")
    if top is not None and (not _is_id(top) or top > MAX_CHAT_LOGPROBS or not logprobs):
        raise bad(f"top_logprobs must be an integer in [0, {MAX_CHAT_LOGPROBS}] with logprobs true", "top_logprobs")
    options = {"stream": flag(body, "stream"), "logprobs": logprobs, "top_logprobs": top or 0}
    return ids, {**options, "return_token_ids": flag(body, "return_token_ids")}


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class RowText(StopText):
    """One generated row as text (up to the first stop string, as `generate` cuts it), with its tokens, their
    log-probabilities and alternatives, and its finish reason."""

    def __init__(self, tokenizer, prompt_ids: list[int], stops: list[str]):
        super().__init__(IncrementalDecoder(tokenizer, prompt_ids), stops)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[list[tuple[int, float]]] = []
        self.finish: str | None = None

    def add(self, tokens, logprobs, top=None) -> str:
        """New tokens -> the text now safe to send."""
        if self.stopped:
            return ""
        self.tokens += tokens
        self.logprobs += logprobs
        self.top += top or [[] for _ in tokens]
        return super().add(tokens)

    def end(self, finish: str) -> str:
        """The row ended: the held-back text and the finish reason ("stop" for EOS and stop strings)."""
        text = super().end()
        self.finish = "stop" if self.stopped or finish in ("eos", "stop") else "length"
        return text


def token_text(tokenizer, token: int) -> str:
    """A token as OpenAI shows it: its text, or "bytes:\\xNN..." when it is not whole UTF-8."""
    raw = tokenizer.token_bytes(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def completion_logprobs(tokenizer, row: RowText, start: int, end: int, offset: int) -> dict:
    """Completions' logprobs object for tokens start..end of a row; text offsets count from `offset`."""
    tokens = [token_text(tokenizer, t) for t in row.tokens[start:end]]
    offsets, at = [], offset
    for piece in row.pieces[start:end]:
        offsets.append(at)
        at += len(piece)
    top = [{token_text(tokenizer, i): v for i, v in alts} for alts in row.top[start:end]]
    return {"tokens": tokens, "token_logprobs": row.logprobs[start:end], "top_logprobs": top, "text_offset": offsets}


def prompt_logprobs(tokenizer, ids: list[int], scores) -> dict:
    """Completions' logprobs object for an echoed prompt: its first token has none (`scores`: the engine's
    "prompt" event, log-probabilities of tokens 2..L and their alternatives)."""
    pieces = IncrementalDecoder(tokenizer).decode_all(ids)
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(ids))]
    top = (
        [{token_text(tokenizer, i): v for i, v in alts} for alts in scores.top] if scores.top else [{}] * (len(ids) - 1)
    )
    return {
        "tokens": [token_text(tokenizer, t) for t in ids],
        "token_logprobs": [None, *scores.logprobs],
        "top_logprobs": [None, *top],
        "text_offset": offsets,
    }


def join_logprobs(first: dict, second: dict) -> dict:
    """Two completions logprobs objects, one after the other."""
    return {name: first[name] + second[name] for name in first}


def chat_logprobs(tokenizer, row: RowText, start: int, end: int) -> dict:
    """Chat's logprobs object ({"content": [...]}) for tokens start..end of a row."""

    def entry(token, logprob):
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}

    content = [
        {**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in alts]}
        for t, lp, alts in zip(row.tokens[start:end], row.logprobs[start:end], row.top[start:end])
    ]
    return {"content": content}
