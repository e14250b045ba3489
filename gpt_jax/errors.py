"""Typed errors. Every one is a `ValueError`, so callers that already catch that keep working.

Each message names the argument (or file), the value it got and what is allowed, so the fix is in the message.
"""


class GptJaxError(ValueError):
    """Base class of every error this package raises on purpose."""


class ConfigError(GptJaxError):
    """A `ModelConfig` field is missing, unknown or out of range."""


class InputError(GptJaxError):
    """An argument of a public call is of the wrong type, out of range or too long."""


class TokenizerError(GptJaxError):
    """A tokenizer file is missing or unreadable, or a text method was called without a tokenizer."""


class CheckpointError(GptJaxError):
    """A checkpoint directory is incomplete, corrupt or does not match its config."""


def check(condition: bool, error: type[GptJaxError], message: str) -> None:
    """Raise `error(message)` unless `condition` holds."""
    if not condition:
        raise error(message)


class ConstraintError(InputError):
    """A structured-output constraint (regex, choice, JSON schema) is malformed, unsupported or too large."""
