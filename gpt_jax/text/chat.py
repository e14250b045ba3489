"""Chat templates: an instruct checkpoint's own Jinja template turns a conversation into the prompt text the model
was trained on. Rendered with `jinja2` in a sandbox (a template is data from a download, so it may not reach Python
internals), with the variables Hugging Face templates read: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception` and `strftime_now`.

A directory carries its template in `chat_template.jinja`, or as `chat_template` in `tokenizer_config.json` (a
string, or a list of named templates, of which "default" is used).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import jinja2
import jinja2.sandbox

from gpt_jax.errors import CheckpointError, InputError, check
from gpt_jax.util.json_files import read_json_object

TEMPLATE_FILE, TOKENIZER_CONFIG = "chat_template.jinja", "tokenizer_config.json"


def _token_text(value) -> str:
    """tokenizer_config.json writes a special token as a string or as {"content": string, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _raise(message: str):
    raise jinja2.TemplateError(message)


class ChatTemplate:
    """A compiled chat template with the special-token strings it may print."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        check(isinstance(source, str) and source.strip(), InputError, "a chat template must be non-empty text")
        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as e:
            raise InputError(f"the chat template does not compile: {e}") from None
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        """A conversation ([{"role": ..., "content": ...}, ...]) -> the prompt text."""
        check_messages(messages)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            # the template's own raise_exception, or a runtime error in it
            raise InputError(f"the chat template refused the conversation: {e}") from None

    @classmethod
    def from_directory(cls, directory: Path) -> ChatTemplate | None:
        """The directory's template, or None when it has none."""
        config_path = directory / TOKENIZER_CONFIG
        config = read_json_object(config_path) if config_path.is_file() else {}
        source = config.get("chat_template")
        if (directory / TEMPLATE_FILE).is_file():
            source = (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
        if isinstance(source, list):  # named templates
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if source is None:
            return None
        check(isinstance(source, str), CheckpointError, f"{directory}: chat_template must be text")
        try:
            return cls(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))
        except InputError as e:
            raise CheckpointError(f"{directory}: {e}") from None

    def transformers_fields(self) -> dict:
        """The special-token names this template prints ("" for none) for `tokenizer_config.json` (transformers
        passes them to the template as gpt_jax does), and special-token strings read as tokens."""
        return {"bos_token": self.bos_token, "eos_token": self.eos_token, "split_special_tokens": False}


def check_messages(messages) -> None:
    """A conversation is a non-empty list of {"role": str, "content": str} dicts (other keys are passed on)."""
    check(
        isinstance(messages, (list, tuple)) and len(messages) > 0,
        InputError,
        "messages must be a non-empty list of {'role': ..., 'content': ...} dicts",
    )
    for i, m in enumerate(messages):
        check(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str),
            InputError,
            f"message {i} must be a dict with a string 'role' and a string 'content', got {str(m)[:80]!r}",
        )
