"""Reading the JSON files of a model directory: damage is a CheckpointError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from gpt_jax.errors import CheckpointError, check


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (config.json, generation_config.json, an index)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    check(isinstance(data, dict), CheckpointError, f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
