"""Typed reads of a Hugging Face config dict: a field of the wrong type is a CheckpointError naming the file and the
field."""

from __future__ import annotations

from gpt_jax.errors import CheckpointError, check


class Fields:
    """Typed reads of a config dict: a field of the wrong type is a CheckpointError naming the file and the field."""

    def __init__(self, raw: dict, source: str):
        self.raw, self.source = raw, source

    def get(self, name: str, kinds: tuple[type, ...], default=None, required: bool = False):
        if name not in self.raw or self.raw[name] is None:
            check(not required, CheckpointError, f"{self.source}: missing field {name!r}")
            return default
        value = self.raw[name]
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        names = " or ".join(k.__name__ for k in kinds)
        check(ok, CheckpointError, f"{self.source}: field {name!r} must be {names}, got {str(value)[:80]!r}")
        return value

    def int(self, name: str, default=None, required: bool = False) -> int:
        return self.get(name, (int,), default, required)

    def float(self, name: str, default: float) -> float:
        return float(self.get(name, (int, float), default))

    def ids(self, name: str) -> tuple[int, ...]:
        """A token id or a list of them (e.g. eos_token_id)."""
        value = self.get(name, (int, list), ())
        value = [value] if isinstance(value, int) else value
        check(
            all(isinstance(v, int) and not isinstance(v, bool) for v in value),
            CheckpointError,
            f"{self.source}: field {name!r} must be a token id or a list of token ids, got {str(value)[:80]!r}",
        )
        return tuple(value)
